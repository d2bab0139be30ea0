package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/solstice-ci/solstice/internal/vm"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

// BenchmarkPrepare measures the host-side preparation of one VM before QEMU
// starts: folder, keys, NoCloud seed (ISO) and qcow2 overlay, then removal.
func BenchmarkPrepare(b *testing.B) {
	base, e := benchBase(b)
	be := New(Config{RuntimeDir: b.TempDir(), Accel: "tcg"})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m, err := be.Create(b.Context(), vm.Spec{JobID: fmt.Sprintf("bench-%d", i), Image: e, BaseImage: base})
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Destroy(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPrepareByHand does the same with the usual tools: ssh-keygen,
// xorriso for the seed and qemu-img for the overlay.
func BenchmarkPrepareByHand(b *testing.B) {
	base, _ := benchBase(b)
	dir := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := filepath.Join(dir, fmt.Sprint(i))
		seed := filepath.Join(d, "seed")
		if err := os.MkdirAll(seed, 0o700); err != nil {
			b.Fatal(err)
		}
		steps := [][]string{
			{"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(d, "key")},
			{"sh", "-c", "printf '{\"instance-id\":\"x\"}' > " + seed + "/meta-data; printf '#cloud-config\\n' > " + seed + "/user-data"},
			{"xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", filepath.Join(d, "seed.iso"), seed},
			{"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, filepath.Join(d, "disk.qcow2")},
		}
		for _, s := range steps {
			if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %v %s", s, err, out)
			}
		}
		if err := os.RemoveAll(d); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBase(b *testing.B) (string, image.Entry) {
	b.Helper()
	base := filepath.Join(b.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "2G").CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	e := image.Entry{Label: "bench", Format: "qcow2", OS: "linux", Arch: "amd64", Firmware: "bios", Seed: "iso",
		UserData: "cloud-config", User: "root", NIC: "virtio-net-pci", Disk: "virtio", CPUs: 1, MemoryMB: 512}
	return base, e
}
