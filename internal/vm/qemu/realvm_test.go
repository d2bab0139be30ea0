package qemu

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/netnstest"
	"github.com/solstice-ci/solstice/internal/vm"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

// The real-VM test boots linux-test under TCG. It runs in a network
// namespace of its own (see package netnstest), so no packet of the guest or of passt
// can leave this machine.

// linuxTest returns the linux-test entry and its cached image, building it
// when missing (a few minutes, once per recipe change; the cache is outside
// the clone). It fails — never skips — when the image cannot be had.
func linuxTest(t *testing.T) (image.Entry, image.Local) {
	t.Helper()
	cat, err := image.DefaultCatalog()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := cat.Lookup("linux-test")
	if !ok {
		t.Fatal("catalog has no linux-test")
	}
	c := &image.Cache{Dir: image.DefaultCacheDir()}
	if l, err := c.Resolve(e); err == nil {
		return e, l
	}
	if netnstest.Inside() {
		t.Fatal("linux-test image missing inside the test namespace")
	}
	t.Logf("building linux-test into %s (once per recipe change)", c.Dir)
	var log bytes.Buffer
	l, err := c.Build(t.Context(), e, &log)
	if err != nil {
		t.Fatalf("building linux-test: %v\n%s", err, tail(log.String(), 30))
	}
	return e, l
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func testBackend(t *testing.T) *Backend {
	dir, err := os.MkdirTemp("", "svm") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return New(Config{RuntimeDir: dir, Accel: "tcg"})
}

func TestRealVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	e, local := linuxTest(t)
	if netnstest.Reexec(t, "TestRealVM") {
		return
	}
	ctx := t.Context()

	// A service on the (namespace's) host loopback, as the store and the
	// broker are on a real host. The guest must not reach it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reached := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			reached <- c.RemoteAddr().String()
			fmt.Fprintln(c, "HOST-LOOPBACK-SECRET")
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	b := testBackend(t)
	spec := vm.Spec{JobID: "realvm-" + fmt.Sprint(time.Now().UnixNano()), Image: e, BaseImage: local.Disk,
		Kernel: local.Kernel, Initrd: local.Initrd, Network: vm.NetworkEgress}
	start := time.Now()
	m, err := b.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handle()
	destroyed := false
	defer func() {
		if !destroyed {
			_ = m.Destroy(context.Background())
		}
	}()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	prepared := time.Since(start)
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("host-side preparation %v, boot to SSH %v (TCG)", prepared.Round(time.Millisecond), time.Since(start).Round(time.Second))
	h = m.Handle()

	// The seed was ejected once the guest was up.
	raw, err := qmpRun(ctx, h.QMP, "query-block", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"qdev": "`+seedCD) && !strings.Contains(string(raw), `"qdev":"`+seedCD) {
		t.Fatalf("query-block does not list the seed drive: %s", raw)
	}
	if strings.Contains(string(raw), "seed.img") {
		t.Fatalf("the seed is still inserted: %s", raw)
	}

	// A command's output, stderr and exit code come back.
	var out, errOut bytes.Buffer
	code, err := m.Exec(ctx, "uname -s; echo to-stderr >&2; exit 7", nil, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if code != 7 || strings.TrimSpace(out.String()) != "Linux" || strings.TrimSpace(errOut.String()) != "to-stderr" {
		t.Fatalf("exec: code %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}

	// Files are copied in with their mode.
	if err := m.CopyIn(ctx, strings.NewReader("#!/bin/sh\necho copied-ok\n"), "/opt/solstice/hello", 0o755); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code, err := m.Exec(ctx, "/opt/solstice/hello && stat -c %a /opt/solstice/hello", nil, &out, &errOut); err != nil || code != 0 {
		t.Fatalf("running the copied file: %d %v %s", code, err, errOut.String())
	}
	if got := strings.Fields(out.String()); len(got) != 2 || got[0] != "copied-ok" || got[1] != "755" {
		t.Fatalf("copied file: %q", out.String())
	}

	// The probe method works (the guest's own sshd answers on its loopback) ...
	probe := func(addr string) string {
		var pout bytes.Buffer
		code, err := m.Exec(ctx, fmt.Sprintf("timeout 8 bash -c 'exec 3<>/dev/tcp/%s; head -c 40 <&3' 2>&1; echo rc=$?", strings.Replace(addr, ":", "/", 1)), nil, &pout, &pout)
		if err != nil {
			t.Fatalf("probing %s: exit %d: %v", addr, code, err)
		}
		return pout.String()
	}
	if got := probe("127.0.0.1:22"); !strings.Contains(got, "SSH-2.0") {
		t.Fatalf("probe of the guest's own sshd: %q", got)
	}
	// ... and it does not reach the host's loopback service through the
	// gateway, through 10.0.2.2, or through the host's address.
	out.Reset()
	_, _ = m.Exec(ctx, "ip -4 route show default | awk '{print $3; exit}'", nil, &out, &errOut)
	gw := strings.TrimSpace(out.String())
	if gw == "" {
		t.Fatalf("guest has no default route (DHCP from passt failed?)")
	}
	for _, host := range []string{gw, "10.0.2.2", "192.0.2.1"} {
		got := probe(fmt.Sprintf("%s:%d", host, port))
		if strings.Contains(got, "HOST-LOOPBACK-SECRET") {
			t.Fatalf("guest reached the host's loopback service through %s: %q", host, got)
		}
		t.Logf("probe %s:%d from the guest: %s", host, port, strings.TrimSpace(got))
	}
	select {
	case from := <-reached:
		t.Fatalf("host loopback service was connected to from %s", from)
	default:
	}

	// Destroy leaves nothing: no QEMU, no passt, no folder (overlay, seed,
	// sockets), and the key only ever lived in memory.
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	destroyed = true
	assertGone(t, h)
}

func assertGone(t *testing.T, h vm.Handle) {
	t.Helper()
	if h.Pid > 0 && processAlive(h.Pid) {
		t.Errorf("qemu pid %d still alive", h.Pid)
	}
	if _, err := os.Stat(h.Dir); !os.IsNotExist(err) {
		t.Errorf("vm folder %s still there (%v)", h.Dir, err)
	}
	// No process of ours mentions the job any more.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(h.JobID)) && !bytes.Contains(b, []byte("-test.run")) {
			t.Errorf("process %s still mentions job %s: %q", p, h.JobID, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// TestReap starts a machine, forgets it (as a crashed orchestrator would)
// and checks that a new backend's reaper kills it and removes its folder.
func TestReap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts qemu")
	}
	e, local := linuxTest(t)
	if netnstest.Reexec(t, "TestReap") {
		return
	}
	b := testBackend(t)
	m, err := b.Create(t.Context(), vm.Spec{JobID: "reap-me", Image: e, BaseImage: local.Disk, Kernel: local.Kernel, Initrd: local.Initrd})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	h := m.Handle()
	if !processAlive(h.Pid) {
		t.Fatal("qemu not running after Start")
	}
	fresh := New(Config{RuntimeDir: b.cfg.RuntimeDir, Accel: "tcg"})
	kept, err := fresh.Reap(t.Context(), func(h vm.Handle) bool { return h.JobID == "keep-me" })
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != 1 || kept[0].JobID != "reap-me" || kept[0].Pid != h.Pid {
		t.Fatalf("reaped %+v, want the one machine with pid %d", kept, h.Pid)
	}
	assertGone(t, h)
}
