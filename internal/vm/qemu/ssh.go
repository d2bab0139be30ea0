package qemu

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// keyPair is an ed25519 key made in memory. The private half never leaves
// the process (the login key) or goes only into the seed (the host key).
type keyPair struct {
	signer     ssh.Signer
	public     ssh.PublicKey
	privatePEM string // set only for host keys
}

func newKeyPair(withPEM bool) (keyPair, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("generating ed25519 key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return keyPair{}, fmt.Errorf("making ssh signer: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return keyPair{}, fmt.Errorf("making ssh public key: %w", err)
	}
	kp := keyPair{signer: signer, public: sshPub}
	if withPEM {
		block, err := ssh.MarshalPrivateKey(priv, "solstice guest host key")
		if err != nil {
			return keyPair{}, fmt.Errorf("encoding host key: %w", err)
		}
		kp.privatePEM = string(pem.EncodeToMemory(block))
	}
	return kp, nil
}

func (k keyPair) authorizedKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.public)))
}

// sshTarget is how to reach a guest.
type sshTarget struct {
	addr    string
	user    string
	login   keyPair
	hostKey ssh.PublicKey // nil: any host key (seeds that cannot pin one)
}

func (t sshTarget) config() *ssh.ClientConfig {
	cb := ssh.InsecureIgnoreHostKey() // only for images whose seed cannot carry a host key
	if t.hostKey != nil {
		cb = ssh.FixedHostKey(t.hostKey)
	}
	return &ssh.ClientConfig{
		User:            t.user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(t.login.signer)},
		HostKeyCallback: cb,
		Timeout:         15 * time.Second,
	}
}

// dial opens one SSH connection, bounded by ctx.
func (t sshTarget) dial(ctx context.Context) (*ssh.Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c, chans, reqs, err := ssh.NewClientConn(conn, t.addr, t.config())
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	client := ssh.NewClient(c, chans, reqs)
	go keepalive(client, 15*time.Second, 4)
	return client, nil
}

// keepalive sends keepalive requests and closes the client after misses
// unanswered ones in a row, so a dead guest fails the command instead of
// hanging it.
func keepalive(c *ssh.Client, every time.Duration, misses int) {
	t := time.NewTicker(every)
	defer t.Stop()
	missed := 0
	for range t.C {
		done := make(chan error, 1)
		go func() {
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				return // connection closed
			}
			missed = 0
		case <-time.After(every):
			missed++
			if missed >= misses {
				c.Close()
				return
			}
		}
	}
}

// waitSSH dials until a session runs `true` or ctx ends; it returns the
// connected client. lastErr describes the last failure.
func (t sshTarget) waitSSH(ctx context.Context, every time.Duration) (*ssh.Client, error) {
	var lastErr error
	for {
		c, err := t.dial(ctx)
		if err == nil {
			var code int
			code, err = runSession(ctx, c, "true", nil, io.Discard, io.Discard)
			if err == nil && code == 0 {
				return c, nil
			}
			if err == nil {
				err = fmt.Errorf("`true` exited %d", code)
			}
			c.Close()
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ssh to %s@%s not ready: %w (last error: %v)", t.user, t.addr, ctx.Err(), lastErr)
		case <-time.After(every):
		}
	}
}

// runSession runs cmd in a new session of c, streaming its output. On ctx
// end the remote command gets SIGKILL and the session is closed.
func runSession(ctx context.Context, c *ssh.Client, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	s, err := c.NewSession()
	if err != nil {
		return -1, fmt.Errorf("opening ssh session: %w", err)
	}
	defer s.Close()
	// The two streams are copied by two goroutines. Wrapping hides
	// io.ReaderFrom (a bytes.Buffer given as both would be grown by two
	// ReadFrom calls at once and lose output) and serializes writes when
	// both streams go to one writer.
	mu := &sync.Mutex{}
	s.Stdout, s.Stderr = &lockedWriter{mu: mu, w: stdout}, &lockedWriter{mu: mu, w: stderr}
	if stdin != nil {
		s.Stdin = stdin
	}
	if err := s.Start(cmd); err != nil {
		return -1, fmt.Errorf("starting %q over ssh: %w", cmd, err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return -1, fmt.Errorf("running %q: %w", cmd, ctx.Err())
	}
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		if ee.Signal() != "" {
			return 128 + signalNumber(ee.Signal()), nil
		}
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, fmt.Errorf("running %q: connection ended without an exit status", cmd)
	}
	return -1, fmt.Errorf("running %q over ssh: %w", cmd, err)
}

func signalNumber(sig string) int {
	switch sig {
	case "HUP":
		return 1
	case "INT":
		return 2
	case "KILL":
		return 9
	case "TERM":
		return 15
	case "PIPE":
		return 13
	}
	return 0
}

// lockedWriter serializes writes to w and hides w's other methods.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	if l.w == nil {
		return len(p), nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// copyInCommand is the guest command that writes its stdin to path with mode.
func copyInCommand(path string, mode os.FileMode) string {
	q := shellQuote(path)
	tmp := shellQuote(path + ".solstice-part")
	return fmt.Sprintf("umask 077 && mkdir -p \"$(dirname %s)\" && cat > %s && chmod %o %s && mv -f %s %s", q, tmp, mode.Perm(), tmp, tmp, q)
}
