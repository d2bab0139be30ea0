// Package qemu is the real vm.Backend: it runs qemu-system-* directly (no
// libvirt) with a qcow2 overlay on a cached base image, a NoCloud seed, a
// QMP socket, the serial console in a file and user-mode networking, and
// reaches the guest over SSH with an ed25519 key that lives only in memory.
package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/solstice-ci/solstice/internal/vm"
)

// tagFile marks a folder under the runtime directory as one of our VMs.
const tagFile = "solstice-vm"

// Config configures a Backend.
type Config struct {
	// RuntimeDir holds one short folder per VM (Unix socket paths are
	// limited to 108 bytes). Default: DefaultRuntimeDir().
	RuntimeDir string
	// Accel is "auto" (probe KVM, else TCG; the default), "kvm" or "tcg".
	Accel string
	// QEMUDir is where qemu-system-* and qemu-img are looked up; empty: PATH.
	QEMUDir string
	// Passt is the passt binary for network mode egress; default "passt".
	Passt string
	// StopTimeout bounds a graceful powerdown before the kill; default 10s.
	StopTimeout time.Duration
	// Log receives the backend's messages; default slog.Default's handler.
	Log *slog.Logger
}

// Backend creates QEMU machines. Safe for concurrent use.
type Backend struct {
	cfg Config

	accelOnce sync.Once
	accel     string

	infoMu   sync.Mutex
	baseSize map[string]int64
}

var _ vm.Backend = (*Backend)(nil)

// DefaultRuntimeDir is /run/solstice for root, else a folder of the user's.
func DefaultRuntimeDir() string {
	if os.Geteuid() == 0 {
		return "/run/solstice"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "solstice")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("solstice-%d", os.Getuid()))
}

// New returns a Backend for cfg.
func New(cfg Config) *Backend {
	if cfg.RuntimeDir == "" {
		cfg.RuntimeDir = DefaultRuntimeDir()
	}
	if cfg.Accel == "" {
		cfg.Accel = "auto"
	}
	if cfg.Passt == "" {
		cfg.Passt = "passt"
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Backend{cfg: cfg, baseSize: map[string]int64{}}
}

func (b *Backend) bin(name string) string {
	if b.cfg.QEMUDir != "" {
		return filepath.Join(b.cfg.QEMUDir, name)
	}
	return name
}

func qemuSystem(arch string) (string, error) {
	switch arch {
	case "amd64", "":
		return "qemu-system-x86_64", nil
	case "arm64":
		return "qemu-system-aarch64", nil
	}
	return "", fmt.Errorf("no qemu-system binary for guest arch %q", arch)
}

// Accel returns the accelerator machines use: kvm only when a probe VM
// actually ran with it (on some hosts /dev/kvm exists and hangs QEMU).
func (b *Backend) Accel(ctx context.Context) string {
	b.accelOnce.Do(func() {
		switch b.cfg.Accel {
		case "kvm", "tcg":
			b.accel = b.cfg.Accel
		default:
			b.accel = "tcg"
			if err := probeKVM(ctx, b.bin("qemu-system-x86_64"), b.cfg.RuntimeDir); err == nil {
				b.accel = "kvm"
			} else {
				b.cfg.Log.Info("using TCG: KVM probe failed", "err", err)
			}
		}
	})
	return b.accel
}

// probeKVM starts a paused VM with KVM and the CPU model machines get,
// lets it run for a moment and asks it over QMP whether KVM is enabled; all
// within 10 seconds. (Seen here: a VM with the default CPU model ran under
// KVM while one with -cpu host aborted at start, failing to set an MSR.)
func probeKVM(ctx context.Context, qemu, runtimeDir string) error {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return fmt.Errorf("no /dev/kvm: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := os.MkdirAll(runtimeDir, 0o700); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(runtimeDir, "probe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := dir + "/qmp.sock"
	cmd := exec.CommandContext(ctx, qemu, "-machine", "pc,accel=kvm", "-cpu", cpuModel("kvm"), "-nodefaults", "-display", "none",
		"-m", "64", "-S", "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.WaitDelay = time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Kill(); <-exited }()
	var q *qmpConn
	for q == nil {
		q, err = dialQMP(ctx, sock)
		if err != nil {
			select {
			case <-ctx.Done():
				return fmt.Errorf("probe VM did not answer: %w", err)
			case <-exited:
				return fmt.Errorf("probe VM exited at start (%v): %s", waitErr, strings.TrimSpace(stderr.String()))
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	defer q.close()
	if _, err := q.execute("cont", nil); err != nil {
		return err
	}
	raw, err := q.execute("query-kvm", nil)
	if err != nil {
		return err
	}
	var st struct{ Enabled, Present bool }
	if err := json.Unmarshal(raw, &st); err != nil {
		return err
	}
	if !st.Enabled {
		return errors.New("kvm not enabled in probe VM")
	}
	if _, err := q.execute("query-status", nil); err != nil {
		return err
	}
	return nil
}

// vmDirName is a short, stable folder name for a job id.
func vmDirName(jobID string) string {
	s := sha256.Sum256([]byte(jobID))
	return "vm-" + hex.EncodeToString(s[:6])
}

// Create makes the machine's folder, overlay, keys and seed.
func (b *Backend) Create(ctx context.Context, spec vm.Spec) (vm.Machine, error) {
	if spec.JobID == "" {
		return nil, errors.New("creating vm: empty job id")
	}
	if spec.BaseImage == "" {
		return nil, fmt.Errorf("creating vm for job %s: no base image for %s", spec.JobID, spec.Image.Label)
	}
	network := spec.Network
	if network == "" {
		network = spec.Image.Network
	}
	if network == "" {
		network = vm.NetworkEgress
	}
	if err := os.MkdirAll(b.cfg.RuntimeDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating runtime folder %s: %w", b.cfg.RuntimeDir, err)
	}
	dir := filepath.Join(b.cfg.RuntimeDir, vmDirName(spec.JobID))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating vm folder for job %s: %w", spec.JobID, err)
	}
	m := &machine{b: b, spec: spec, l: newLayout(dir), network: network}
	m.h = vm.Handle{Version: 1, JobID: spec.JobID, Dir: dir, QMP: m.l.QMP, Overlay: m.l.Overlay}
	if err := m.prepare(ctx); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("creating vm for job %s: %w", spec.JobID, err)
	}
	return m, nil
}

// Reap kills the machines under the runtime folder for which keep returns
// false and removes their folders. A QEMU or passt process is killed only
// when its command line still carries our tag, so a recycled pid is safe.
func (b *Backend) Reap(_ context.Context, keep func(vm.Handle) bool) ([]vm.Handle, error) {
	entries, err := os.ReadDir(b.cfg.RuntimeDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading runtime folder: %w", err)
	}
	var reaped []vm.Handle
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "vm-") {
			continue
		}
		l := newLayout(filepath.Join(b.cfg.RuntimeDir, e.Name()))
		tag, err := os.ReadFile(filepath.Join(l.Dir, tagFile))
		if err != nil {
			continue // not ours
		}
		h := vm.Handle{Version: 1, JobID: string(tag), Dir: l.Dir, QMP: l.QMP, Overlay: l.Overlay}
		if raw, err := os.ReadFile(l.HandleFile); err == nil {
			_ = json.Unmarshal(raw, &h)
		}
		if keep != nil && keep(h) {
			continue
		}
		killTagged(l.Pidfile, "solstice-"+h.JobID)
		killTagged(l.PasstPid, l.PasstSock)
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", l.Dir, err))
			continue
		}
		b.cfg.Log.Info("reaped vm left by an earlier process", "job", h.JobID, "pid", h.Pid)
		reaped = append(reaped, h)
	}
	return reaped, errors.Join(errs...)
}

// killTagged kills the process in pidfile if its command line contains tag,
// and waits up to 5 s for it to go.
func killTagged(pidfile, tag string) {
	raw, err := os.ReadFile(pidfile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 1 {
		return
	}
	if !processHasTag(pid, tag) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && processAlive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

func processHasTag(pid int, tag string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte(tag))
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// freePort picks a loopback port the kernel reports free. Another process
// may take it before QEMU or passt binds it; Start then retries with a new
// port (see machine.Start).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("picking a loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
