package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/solstice-ci/solstice/internal/vm"
)

// machine is one QEMU VM.
type machine struct {
	b       *Backend
	spec    vm.Spec
	l       layout
	network string

	login, host keyPair
	pinHost     bool

	mu        sync.Mutex
	h         vm.Handle
	qemu      *exec.Cmd
	qemuDone  chan struct{}
	passt     *exec.Cmd
	client    *ssh.Client
	destroyed bool
}

var _ vm.Machine = (*machine)(nil)

func (m *machine) Handle() vm.Handle {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h
}

func (m *machine) GuestOS() string   { return m.spec.Image.OS }
func (m *machine) GuestArch() string { return m.spec.Image.Arch }

// prepare writes the tag, the overlay and the seed.
func (m *machine) prepare(ctx context.Context) error {
	if err := os.WriteFile(m.l.Dir+"/"+tagFile, []byte(m.spec.JobID), 0o600); err != nil {
		return fmt.Errorf("writing tag: %w", err)
	}
	var err error
	if m.login, err = newKeyPair(false); err != nil {
		return err
	}
	e := m.spec.Image
	m.pinHost = e.UserData == "" || e.UserData == "cloud-config"
	in := SeedInput{
		InstanceID:    "solstice-" + m.spec.JobID,
		Hostname:      hostnameFor(m.spec.JobID),
		AuthorizedKey: m.login.authorizedKey(),
	}
	if m.pinHost {
		if m.host, err = newKeyPair(true); err != nil {
			return err
		}
		in.HostKeyPrivate, in.HostKeyPublic = m.host.privatePEM, m.host.authorizedKey()
	}
	files, err := SeedFiles(e, in)
	if err != nil {
		return err
	}
	if err := WriteSeed(m.l.Seed, e.Seed, files); err != nil {
		return err
	}
	return m.b.makeOverlay(ctx, m.spec.BaseImage, e.Format, e.DiskGB, m.l.Overlay)
}

func hostnameFor(jobID string) string {
	var b strings.Builder
	b.WriteString("solstice-")
	for _, r := range strings.ToLower(jobID) {
		if b.Len() >= 40 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// makeOverlay creates a qcow2 overlay on base (never a copy), grown to
// diskGB when that is larger than the base.
func (b *Backend) makeOverlay(ctx context.Context, base, format string, diskGB int, overlay string) error {
	if format == "" {
		format = "qcow2"
	}
	args := []string{"create", "-q", "-f", "qcow2", "-F", format, "-b", base, overlay}
	if diskGB > 0 {
		size, err := b.virtualSize(ctx, base, format)
		if err != nil {
			return err
		}
		if want := int64(diskGB) << 30; want > size {
			args = append(args, fmt.Sprint(want))
		}
	}
	out, err := exec.CommandContext(ctx, b.bin("qemu-img"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("creating overlay on %s: %w: %s", base, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (b *Backend) virtualSize(ctx context.Context, base, format string) (int64, error) {
	b.infoMu.Lock()
	defer b.infoMu.Unlock()
	if s, ok := b.baseSize[base]; ok {
		return s, nil
	}
	out, err := exec.CommandContext(ctx, b.bin("qemu-img"), "info", "--output=json", "-f", format, base).Output()
	if err != nil {
		return 0, fmt.Errorf("reading size of %s: %w", base, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("decoding qemu-img info of %s: %w", base, err)
	}
	b.baseSize[base] = info.VirtualSize
	return info.VirtualSize, nil
}

// Start spawns passt (network egress) and QEMU. A forward port taken by
// another process between picking and binding makes the spawn fail; Start
// then tries again with another port.
func (m *machine) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.destroyed {
		return errors.New("starting vm: destroyed")
	}
	if m.qemu != nil {
		return nil
	}
	accel := m.b.Accel(ctx)
	qemuBin, err := qemuSystem(m.spec.Image.Arch)
	if err != nil {
		return err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		lastErr = m.spawn(ctx, m.b.bin(qemuBin), accel, port)
		if lastErr == nil {
			return nil
		}
		if !errors.Is(lastErr, errPortTaken) {
			break
		}
	}
	return fmt.Errorf("starting vm for job %s: %w", m.spec.JobID, lastErr)
}

var errPortTaken = errors.New("forward port taken")

func (m *machine) spawn(ctx context.Context, qemuBin, accel string, port int) error {
	args, err := qemuArgs(m.spec, m.l, accel, m.network, port)
	if err != nil {
		return err
	}
	cmd := exec.Command(qemuBin, args...)
	if m.network == vm.NetworkEgress {
		qemuEnd, err := m.startPasst(ctx, port)
		if err != nil {
			return err
		}
		defer qemuEnd.Close()
		cmd.ExtraFiles = []*os.File{qemuEnd} // fd 3
	}
	// Its own process group: a ^C at the terminal goes to us, not to the VM;
	// we stop it ourselves, and the reaper finds it if we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	errLog, err := os.OpenFile(m.l.Dir+"/qemu.log", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("opening qemu log: %w", err)
	}
	defer errLog.Close()
	cmd.Stdout, cmd.Stderr = errLog, errLog
	m.b.cfg.Log.Debug("starting qemu", "job", m.spec.JobID, "cmd", commandLine(qemuBin, args))
	if err := cmd.Start(); err != nil {
		m.stopPasst()
		return fmt.Errorf("running %s: %w", qemuBin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	// QEMU binds the hostfwd port and creates the QMP socket at start-up;
	// it is up once QMP answers, or failed if it exited first.
	for {
		select {
		case <-done:
			m.stopPasst()
			msg := readTail(m.l.Dir+"/qemu.log", 20)
			if strings.Contains(msg, "Could not set up host forwarding") {
				return fmt.Errorf("%w: %s", errPortTaken, msg)
			}
			return fmt.Errorf("qemu exited at start: %s", msg)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			m.stopPasst()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := os.Stat(m.l.QMP); err == nil {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := qmpRun(qctx, m.l.QMP, "query-status", nil)
			cancel()
			if err == nil {
				break
			}
		}
	}
	m.qemu, m.qemuDone = cmd, done
	m.h.Pid = cmd.Process.Pid
	m.h.SSHPort = port
	m.h.StartedAt = time.Now().UTC()
	if raw, err := json.Marshal(m.h); err == nil {
		_ = os.WriteFile(m.l.HandleFile, raw, 0o600)
	}
	return nil
}

// startPasst runs passt on one end of a new socket pair and returns the
// other end for QEMU. passt can fail to bind the forward port when another
// process took it; it then exits, which is reported as errPortTaken.
func (m *machine) startPasst(ctx context.Context, port int) (*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("making socket pair for passt: %w", err)
	}
	passtEnd, qemuEnd := os.NewFile(uintptr(fds[0]), "passt-end"), os.NewFile(uintptr(fds[1]), "qemu-end")
	defer passtEnd.Close()
	cmd := exec.Command(m.b.cfg.Passt, passtArgs(m.l, port)...)
	cmd.ExtraFiles = []*os.File{passtEnd} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.OpenFile(m.l.PasstLog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		qemuEnd.Close()
		return nil, fmt.Errorf("opening passt log: %w", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		qemuEnd.Close()
		return nil, fmt.Errorf("running passt: %w", err)
	}
	// passt drops root for nobody and could not write a pidfile into our
	// folder; it stays in the foreground, so its pid is the one we started.
	_ = os.WriteFile(m.l.PasstPid, []byte(fmt.Sprintf("%d\n", cmd.Process.Pid)), 0o600)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	// passt binds the forward port once it is ready; until then the port
	// can still be bound here.
	for {
		select {
		case <-done:
			qemuEnd.Close()
			msg := readTail(m.l.PasstLog, 10)
			if strings.Contains(msg, "in use") || strings.Contains(msg, "bind") {
				return nil, fmt.Errorf("%w: %s", errPortTaken, msg)
			}
			return nil, fmt.Errorf("passt exited at start: %s", msg)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			qemuEnd.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			continue
		}
		m.passt = cmd
		return qemuEnd, nil
	}
}

func (m *machine) stopPasst() {
	if m.passt != nil && m.passt.Process != nil {
		_ = m.passt.Process.Kill()
	}
	m.passt = nil
}

func (m *machine) target() sshTarget {
	user := m.spec.Image.User
	if user == "" {
		user = "root"
	}
	t := sshTarget{addr: fmt.Sprintf("127.0.0.1:%d", m.h.SSHPort), user: user, login: m.login}
	if m.pinHost {
		t.hostKey = m.host.public
	}
	return t
}

// WaitReady waits for SSH up to the boot timeout.
func (m *machine) WaitReady(ctx context.Context) error {
	m.mu.Lock()
	if m.qemu == nil {
		m.mu.Unlock()
		return errors.New("waiting for vm: not started")
	}
	t, done := m.target(), m.qemuDone
	m.mu.Unlock()
	timeout := m.spec.BootTimeout
	if timeout <= 0 {
		timeout = time.Duration(m.spec.Image.BootTimeoutSeconds) * time.Second
		if m.b.Accel(ctx) == "kvm" {
			timeout /= 4
		}
	}
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-done: // QEMU died: no point waiting
			cancel()
		case <-wctx.Done():
		}
	}()
	c, err := t.waitSSH(wctx, time.Second)
	if err != nil {
		select {
		case <-done:
			err = fmt.Errorf("qemu exited before the guest was reachable: %s", readTail(m.l.Dir+"/qemu.log", 5))
		default:
		}
		return fmt.Errorf("vm of job %s not reachable after %s: %w\nlast lines of its serial console:\n%s",
			m.spec.JobID, timeout, err, readTail(m.l.Console, 25))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.destroyed {
		c.Close()
		return errors.New("vm destroyed while booting")
	}
	m.client = c
	// The seed's job is done: eject an ISO seed so nothing in the guest reads
	// it later (a FAT seed is a fixed disk and stays).
	if m.spec.Image.Seed == "" || m.spec.Image.Seed == "iso" {
		if _, err := qmpRun(ctx, m.l.QMP, "eject", map[string]any{"id": seedCD, "force": true}); err != nil {
			m.b.cfg.Log.Warn("ejecting the seed", "job", m.spec.JobID, "err", err)
		}
	}
	return nil
}

func (m *machine) sshClient() (*ssh.Client, sshTarget, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.destroyed {
		return nil, sshTarget{}, errors.New("vm destroyed")
	}
	if m.client == nil {
		return nil, sshTarget{}, errors.New("vm not ready")
	}
	return m.client, m.target(), nil
}

// Exec runs cmd over SSH as the login user (through sudo or pfexec when
// that is not root; see asRoot).
func (m *machine) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c, t, err := m.sshClient()
	if err != nil {
		return -1, fmt.Errorf("exec in vm of job %s: %w", m.spec.JobID, err)
	}
	return runSession(ctx, c, asRoot(t.user, m.spec.Image.OS, cmd), stdin, stdout, stderr)
}

// asRoot wraps cmd so it runs as root when the login user is not root.
func asRoot(user, goos, cmd string) string {
	if user == "root" {
		return cmd
	}
	if goos == "illumos" {
		return "pfexec sh -c " + shellQuote(cmd)
	}
	return "sudo -n sh -c " + shellQuote(cmd)
}

// CopyIn writes r to path in the guest.
func (m *machine) CopyIn(ctx context.Context, r io.Reader, path string, mode os.FileMode) error {
	var stderr strings.Builder
	code, err := m.Exec(ctx, copyInCommand(path, mode), r, io.Discard, &stderr)
	if err != nil {
		return fmt.Errorf("copying to %s: %w", path, err)
	}
	if code != 0 {
		return fmt.Errorf("copying to %s: exit %d: %s", path, code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Stop powers the guest off: ACPI powerdown over QMP (or the image's
// shutdown command over SSH when it has one), StopTimeout, then kill.
func (m *machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	cmd, done, client := m.qemu, m.qemuDone, m.client
	m.client = nil
	m.mu.Unlock()
	if client != nil {
		if sd := m.spec.Image.Shutdown; sd != "" {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, _ = runSession(sctx, client, asRoot(m.target().user, m.spec.Image.OS, sd), nil, io.Discard, io.Discard)
			cancel()
		}
		client.Close()
	}
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
	default:
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, _ = qmpRun(qctx, m.l.QMP, "system_powerdown", nil)
		cancel()
		select {
		case <-done:
		case <-time.After(m.b.cfg.StopTimeout):
			_ = cmd.Process.Kill()
			<-done
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
		}
	}
	m.mu.Lock()
	m.stopPasst()
	m.mu.Unlock()
	return nil
}

// Destroy kills QEMU at once (the overlay is thrown away, so a clean
// shutdown buys nothing) and removes the folder with overlay, seed and
// sockets. The login key goes with the machine's memory.
func (m *machine) Destroy(ctx context.Context) error {
	m.mu.Lock()
	if m.destroyed {
		m.mu.Unlock()
		return nil
	}
	m.destroyed = true
	cmd, done, client := m.qemu, m.qemuDone, m.client
	m.client = nil
	m.mu.Unlock()
	if client != nil {
		client.Close()
	}
	if cmd != nil {
		_ = cmd.Process.Kill()
		<-done
	}
	m.mu.Lock()
	m.stopPasst()
	m.mu.Unlock()
	killTagged(m.l.PasstPid, m.l.PasstSock)
	m.login, m.host = keyPair{}, keyPair{}
	if err := os.RemoveAll(m.l.Dir); err != nil {
		return fmt.Errorf("destroying vm of job %s: %w", m.spec.JobID, err)
	}
	return nil
}

// readTail returns the last n lines of a file, for error messages.
func readTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		_, _ = f.Seek(-64<<10, io.SeekEnd)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, strings.TrimRight(sc.Text(), "\r"))
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
