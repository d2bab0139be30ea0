package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

func TestDefaultCatalog(t *testing.T) {
	c, err := DefaultCatalog()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"freebsd-14", "linux-test", "omnios-bloody", "omnios-r151054", "omnios-r151056", "openindiana-hipster"}
	if got := strings.Join(c.Labels(), " "); got != strings.Join(want, " ") {
		t.Fatalf("labels %q, want %q", got, want)
	}
	for _, e := range c.Entries() {
		if e.OS == "illumos" && e.Shutdown == "" {
			t.Errorf("%s: illumos entry without a shutdown command", e.Label)
		}
	}
}

func TestParseCatalogErrorsNameTheField(t *testing.T) {
	base := `images:
  - label: x
    url: https://example.org/x.qcow2
    sha256: ` + strings.Repeat("a", 64) + `
    format: qcow2
    os: linux
    arch: amd64
    firmware: bios
    seed: iso
    user_data: cloud-config
    user: root
    nic: virtio-net-pci
    disk: virtio
    cpus: 1
    memory_mb: 512
`
	if _, err := ParseCatalog(strings.NewReader(base), "t"); err != nil {
		t.Fatalf("valid catalog refused: %v", err)
	}
	cases := []struct{ from, to, want string }{
		{"format: qcow2", "format: vmdk", "format"},
		{"os: linux", "os: windows", "os"},
		{"seed: iso", "seed: floppy", "seed"},
		{"sha256: " + strings.Repeat("a", 64), "sha256: xyz", "sha256"},
		{"label: x", "label: X Y", "label"},
		{"cpus: 1", "cpus: 0", "cpus"},
		{"memory_mb: 512", "memory_mb: 1", "memory_mb"},
		{"nic: virtio-net-pci", "nic: rtl8139", "nic"},
		{"user: root", "colour: blue", "colour"},
	}
	for _, c := range cases {
		_, err := ParseCatalog(strings.NewReader(strings.Replace(base, c.from, c.to, 1)), "t")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s → %s: error %v, want one naming %q", c.from, c.to, err, c.want)
		}
	}
	if _, err := ParseCatalog(strings.NewReader(base+strings.TrimPrefix(base, "images:\n")), "t"); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate label: %v", err)
	}
}

func TestParseChecksums(t *testing.T) {
	h := strings.Repeat("ab", 32)
	o := strings.Repeat("cd", 32)
	cases := []struct{ file, name, want string }{
		{h + "  disk.qcow2\n" + o + "  other\n", "disk.qcow2", h},
		{o + " *other\n" + h + " *disk.qcow2\n", "disk.qcow2", h},
		{"SHA256 (other) = " + o + "\nSHA256 (disk.qcow2.xz) = " + strings.ToUpper(h) + "\n", "disk.qcow2.xz", h},
		{h + "\n", "anything", h},
	}
	for _, c := range cases {
		got, err := ParseChecksums(strings.NewReader(c.file), c.name)
		if err != nil || got != c.want {
			t.Errorf("%q: got %q, %v; want %q", c.file, got, err, c.want)
		}
	}
	if _, err := ParseChecksums(strings.NewReader(h+"  a\n"+o+"  b\n"), "c"); err == nil {
		t.Error("missing name accepted")
	}
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestPull serves images from a loopback server and pulls them: checksum
// pinned or from a checksum file, zstd and xz, and a bad checksum that must
// leave nothing in the cache.
func TestPull(t *testing.T) {
	disk := bytes.Repeat([]byte("solstice disk image\n"), 50000)
	var zst, xzb bytes.Buffer
	zw, _ := zstd.NewWriter(&zst)
	zw.Write(disk)
	zw.Close()
	xw, _ := xz.NewWriter(&xzb)
	xw.Write(disk)
	xw.Close()
	files := map[string][]byte{"/a.qcow2": disk, "/b.raw.zst": zst.Bytes(), "/c.qcow2.xz": xzb.Bytes()}
	files["/SUMS"] = []byte(sum(zst.Bytes()) + "  b.raw.zst\n" + sum(xzb.Bytes()) + "  c.qcow2.xz\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	defer srv.Close()
	entry := func(label, path, format, comp, sha, shaURL string) Entry {
		return Entry{Label: label, URL: srv.URL + path, Format: format, Compression: comp, SHA256: sha, SHA256URL: shaURL,
			OS: "linux", Arch: "amd64", Firmware: "bios", Seed: "iso", UserData: "cloud-config", User: "root",
			NIC: "virtio-net-pci", Disk: "virtio", CPUs: 1, MemoryMB: 512}
	}
	c := &Cache{Dir: t.TempDir()}
	for _, e := range []Entry{
		entry("plain", "/a.qcow2", "qcow2", "", sum(disk), ""),
		entry("zst", "/b.raw.zst", "raw", "zst", "", srv.URL+"/SUMS"),
		entry("xz", "/c.qcow2.xz", "qcow2", "xz", "", srv.URL+"/SUMS"),
	} {
		if err := e.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Resolve(e); !errors.Is(err, ErrNotCached) {
			t.Fatalf("%s: resolve before pull: %v", e.Label, err)
		}
		var progress bytes.Buffer
		l, err := c.Pull(t.Context(), e, &progress)
		if err != nil {
			t.Fatalf("%s: %v", e.Label, err)
		}
		got, err := os.ReadFile(l.Disk)
		if err != nil || !bytes.Equal(got, disk) {
			t.Fatalf("%s: cached disk differs (%v)", e.Label, err)
		}
		if progress.Len() == 0 {
			t.Errorf("%s: no progress shown", e.Label)
		}
	}
	bad := entry("bad", "/a.qcow2", "qcow2", "", strings.Repeat("0", 64), "")
	if _, err := c.Pull(t.Context(), bad, nil); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("bad checksum: %v", err)
	}
	var left []string
	all, _ := filepath.Glob(filepath.Join(c.Dir, "*bad*"))
	for _, p := range all {
		if !strings.HasSuffix(p, ".lock") { // the lock file may stay
			left = append(left, p)
		}
	}
	if len(left) != 0 {
		t.Fatalf("a failed pull left %v in the cache", left)
	}
}

func FuzzParseCatalog(f *testing.F) {
	f.Add(defaultCatalog)
	f.Add([]byte("images: []\n"))
	f.Add([]byte("images:\n  - label: x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCatalog(bytes.NewReader(b), "fuzz")
		if err != nil {
			return
		}
		for _, e := range c.Entries() {
			if err := e.Validate(); err != nil {
				t.Fatalf("accepted entry fails validation: %v", err)
			}
		}
	})
}

func FuzzParseChecksums(f *testing.F) {
	f.Add([]byte(strings.Repeat("ab", 32)+"  x\n"), "x")
	f.Add([]byte("SHA256 (x) = "+strings.Repeat("ab", 32)+"\n"), "x")
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		got, err := ParseChecksums(bytes.NewReader(b), name)
		if err == nil && !hexRE.MatchString(got) {
			t.Fatalf("returned %q, not a sha256", got)
		}
	})
}
