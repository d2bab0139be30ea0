package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/solstice-ci/solstice/internal/vm"
	"github.com/solstice-ci/solstice/internal/vm/qemu"
)

func vmCmd() command {
	return command{"boot a fresh VM, run one command over SSH, destroy it (vm run --image LABEL -- CMD)", func(ctx context.Context, env *cliEnv, args []string) error {
		if len(args) == 0 || args[0] != "run" {
			fmt.Fprintln(env.stderr, "usage: solstice vm run [flags] --image LABEL -- CMD [ARG...]")
			return exitError{2}
		}
		fs := flag.NewFlagSet("vm run", flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var f imageFlags
		f.register(fs)
		label := fs.String("image", "linux-test", "runs-on label of the image")
		network := fs.String("network", "", "egress (outbound allowed, host loopback closed) or none; default: the image's")
		accel := fs.String("accel", "auto", "auto (KVM when a probe VM works, else TCG), kvm or tcg")
		runtimeDir := fs.String("runtime-dir", qemu.DefaultRuntimeDir(), "folder for the VM's sockets, overlay and seed")
		if err := fs.Parse(args[1:]); err != nil {
			return exitError{2}
		}
		cmdArgs := fs.Args()
		if len(cmdArgs) == 0 {
			return fmt.Errorf("no command to run (solstice vm run --image LABEL -- CMD)")
		}
		cat, cache, err := f.open()
		if err != nil {
			return err
		}
		e, ok := cat.Lookup(*label)
		if !ok {
			return fmt.Errorf("no image %q in the catalog (solstice image list)", *label)
		}
		local, err := cache.Ensure(ctx, e, env.stderr)
		if err != nil {
			return err
		}
		b := qemu.New(qemu.Config{RuntimeDir: *runtimeDir, Accel: *accel})
		spec := vm.Spec{JobID: fmt.Sprintf("vmrun-%d", time.Now().UnixNano()), Image: e, BaseImage: local.Disk,
			Kernel: local.Kernel, Initrd: local.Initrd, Network: *network}
		start := time.Now()
		m, err := b.Create(ctx, spec)
		if err != nil {
			return err
		}
		defer m.Destroy(context.WithoutCancel(ctx))
		if err := m.Start(ctx); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "booting %s (%s)...\n", e.Label, b.Accel(ctx))
		if err := m.WaitReady(ctx); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "ssh ready after %s\n", time.Since(start).Round(100*time.Millisecond))
		code, err := m.Exec(ctx, shellJoin(cmdArgs), nil, env.stdout, env.stderr)
		if err != nil {
			return err
		}
		if code != 0 {
			return exitError{code}
		}
		return nil
	}}
}

// shellJoin quotes args for the guest's shell; a single argument is taken
// as a shell command line as it is.
func shellJoin(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
