package qemu

import (
	"bytes"
	"log/slog"
	"os/exec"
	"testing"
	"time"
)

// TestAccelAuto checks that the accelerator "auto" picks can run a machine
// with the CPU model machines get. On a host where KVM ran a VM with the
// default CPU model but aborted one with -cpu host, the probe used to pick
// KVM and every job failed at start.
func TestAccelAuto(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU")
	}
	b := New(Config{Accel: "auto", RuntimeDir: t.TempDir(), Log: slog.New(slog.DiscardHandler)})
	accel := b.Accel(t.Context())
	t.Logf("auto picked %s", accel)
	cmd := exec.CommandContext(t.Context(), "qemu-system-x86_64", "-machine", "pc,accel="+accel, "-cpu", cpuModel(accel),
		"-nodefaults", "-display", "none", "-m", "64", "-S")
	var out bytes.Buffer // one writer for both: exec copies them in one goroutine
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("QEMU with accel=%s -cpu %s exited at start: %v\n%s", accel, cpuModel(accel), err, out.String())
	case <-time.After(2 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}
