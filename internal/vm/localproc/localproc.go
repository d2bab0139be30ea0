// Package localproc is a vm.Backend that runs "machines" as local process
// groups in a folder of their own instead of QEMU guests. It is a stand-in
// for tests of the orchestrator's many-job and crash paths, where booting
// dozens of real VMs under TCG would take hours; it is never used for real
// jobs. Its guest OS is the host's (runtime.GOOS/GOARCH).
//
// Every machine is a folder under Dir holding a marker with the job id, the
// machine's "home" and a pidfile per running command, so Reap finds the
// process groups an earlier, killed process left behind.
package localproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/solstice-ci/solstice/internal/vm"
)

const markerFile = "solstice-localproc"

// Backend makes local-process machines under Dir.
type Backend struct {
	Dir string
}

var _ vm.Backend = (*Backend)(nil)

// Create makes the machine's folder.
func (b *Backend) Create(_ context.Context, spec vm.Spec) (vm.Machine, error) {
	if spec.JobID == "" || strings.ContainsAny(spec.JobID, "/\\") {
		return nil, fmt.Errorf("creating local machine: bad job id %q", spec.JobID)
	}
	dir := filepath.Join(b.Dir, spec.JobID)
	if err := os.MkdirAll(filepath.Join(dir, "home"), 0o700); err != nil {
		return nil, fmt.Errorf("creating local machine %s: %w", spec.JobID, err)
	}
	if err := os.WriteFile(filepath.Join(dir, markerFile), []byte(spec.JobID), 0o600); err != nil {
		return nil, fmt.Errorf("creating local machine %s: %w", spec.JobID, err)
	}
	return &machine{dir: dir, h: vm.Handle{Version: 1, JobID: spec.JobID, Dir: dir}}, nil
}

// Reap kills the process groups of machines under Dir that keep rejects
// and removes their folders.
func (b *Backend) Reap(_ context.Context, keep func(vm.Handle) bool) ([]vm.Handle, error) {
	entries, err := os.ReadDir(b.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reaping local machines in %s: %w", b.Dir, err)
	}
	var reaped []vm.Handle
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(b.Dir, e.Name())
		id, err := os.ReadFile(filepath.Join(dir, markerFile))
		if err != nil {
			continue // not ours
		}
		h := vm.Handle{Version: 1, JobID: string(id), Dir: dir}
		if keep != nil && keep(h) {
			continue
		}
		killGroups(dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, h)
	}
	return reaped, errors.Join(errs...)
}

// killGroups kills every process group recorded in dir/pids.
func killGroups(dir string) {
	pids, _ := filepath.Glob(filepath.Join(dir, "pids", "*"))
	for _, p := range pids {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err == nil && pid > 1 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		_ = os.Remove(p)
	}
}

type machine struct {
	dir string
	h   vm.Handle

	mu        sync.Mutex
	destroyed bool
	started   bool
}

func (m *machine) Handle() vm.Handle { m.mu.Lock(); defer m.mu.Unlock(); return m.h }
func (m *machine) GuestOS() string   { return runtime.GOOS }
func (m *machine) GuestArch() string { return runtime.GOARCH }

func (m *machine) Start(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.destroyed {
		return errors.New("starting local machine: destroyed")
	}
	m.started = true
	m.h.Pid = os.Getpid()
	m.h.StartedAt = time.Now()
	return os.MkdirAll(filepath.Join(m.dir, "pids"), 0o700)
}

func (m *machine) WaitReady(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.destroyed {
		return errors.New("local machine is not running")
	}
	return nil
}

// Exec runs cmd with sh in the machine's home, in a process group of its own
// recorded in the machine's folder. Cancelling ctx kills the group.
func (m *machine) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if err := m.WaitReady(ctx); err != nil {
		return -1, err
	}
	home := filepath.Join(m.dir, "home")
	c := exec.Command("/bin/sh", "-c", cmd)
	c.Dir = home
	c.Env = append(os.Environ(), "HOME="+home)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return -1, fmt.Errorf("running %q in local machine: %w", cmd, err)
	}
	pidFile := filepath.Join(m.dir, "pids", strconv.Itoa(c.Process.Pid))
	_ = os.WriteFile(pidFile, nil, 0o600)
	defer os.Remove(pidFile)
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err := c.Wait()
	close(done)
	if ctx.Err() != nil {
		return -1, fmt.Errorf("running %q in local machine: %w", cmd, context.Cause(ctx))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, fmt.Errorf("running %q in local machine: %w", cmd, err)
	}
	return 0, nil
}

// CopyIn writes r to path, which must be inside the machine's home when
// absolute, or is taken relative to it.
func (m *machine) CopyIn(_ context.Context, r io.Reader, path string, mode os.FileMode) error {
	home := filepath.Join(m.dir, "home")
	target := path
	if !filepath.IsAbs(target) {
		target = filepath.Join(home, target)
	}
	rel, err := filepath.Rel(home, filepath.Clean(target))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("copying into local machine: %s is outside its home %s", path, home)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return fmt.Errorf("copying into local machine: %w", err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return fmt.Errorf("copying into local machine: reading: %w", err)
	}
	if err := os.WriteFile(target, buf.Bytes(), mode); err != nil {
		return fmt.Errorf("copying into local machine: %w", err)
	}
	return os.Chmod(target, mode)
}

// Stop kills every running command of the machine.
func (m *machine) Stop(context.Context) error {
	killGroups(m.dir)
	return nil
}

// Destroy kills the commands and removes the machine's folder.
func (m *machine) Destroy(ctx context.Context) error {
	m.mu.Lock()
	m.destroyed = true
	m.mu.Unlock()
	_ = m.Stop(ctx)
	if err := os.RemoveAll(m.dir); err != nil {
		return fmt.Errorf("destroying local machine: %w", err)
	}
	return nil
}
