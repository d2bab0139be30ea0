package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/vm"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// TestGoldenCommandLines pins the QEMU command line of every catalog entry
// in both network modes and both accelerators.
func TestGoldenCommandLines(t *testing.T) {
	cat, err := image.DefaultCatalog()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cat.Entries() {
		t.Run(e.Label, func(t *testing.T) {
			l := newLayout("/run/solstice/vm-0123456789ab")
			spec := vm.Spec{JobID: "job-1", Image: e, BaseImage: "/cache/" + e.Label + "/disk." + e.Format}
			if e.Boot == "kernel" {
				spec.Kernel, spec.Initrd = "/cache/"+e.Label+"/vmlinuz", "/cache/"+e.Label+"/initrd.img"
			}
			var b strings.Builder
			for _, accel := range []string{"tcg", "kvm"} {
				for _, network := range []string{vm.NetworkEgress, vm.NetworkNone} {
					args, err := qemuArgs(spec, l, accel, network, 40022)
					if err != nil {
						t.Fatal(err)
					}
					b.WriteString("# accel " + accel + ", network " + network + "\n")
					b.WriteString(formatArgs(args))
				}
			}
			b.WriteString("# passt (network egress)\npasst " + strings.Join(passtArgs(l, 40022), " ") + "\n")
			golden(t, "cmdline/"+e.Label+".golden", b.String())
		})
	}
}

// TestGoldenSeeds pins the seed files of every catalog entry.
func TestGoldenSeeds(t *testing.T) {
	cat, err := image.DefaultCatalog()
	if err != nil {
		t.Fatal(err)
	}
	in := SeedInput{
		InstanceID:     "solstice-job-1",
		Hostname:       "solstice-job1",
		AuthorizedKey:  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBf9d6Y0Hh4cN8gGkqg2nUj5j2m0T3yq0Zb4qj4Yb1lh",
		HostKeyPrivate: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-test-only\n-----END OPENSSH PRIVATE KEY-----\n",
		HostKeyPublic:  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForGoldenFilesOnly",
	}
	for _, e := range cat.Entries() {
		t.Run(e.Label, func(t *testing.T) {
			files, err := SeedFiles(e, in)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for n := range files {
				names = append(names, n)
			}
			sort.Strings(names)
			var b strings.Builder
			b.WriteString("# seed kind " + e.Seed + ", volume label " + SeedLabel + "\n")
			for _, n := range names {
				b.WriteString("=== " + n + "\n" + string(files[n]))
			}
			golden(t, "seed/"+e.Label+".golden", b.String())
		})
	}
}

// TestSeedVolumes writes both seed kinds and reads the files back through
// the same library, checking names survive (Rock Ridge on ISO, long names
// on FAT) and the label is cidata.
func TestSeedVolumes(t *testing.T) {
	files := map[string][]byte{"meta-data": []byte(`{"instance-id":"x"}`), "user-data": []byte("#cloud-config\n")}
	for _, kind := range []string{"iso", "fat"} {
		t.Run(kind, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "seed")
			if err := WriteSeed(p, kind, files); err != nil {
				t.Fatal(err)
			}
			got, label, err := readSeed(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.EqualFold(label, SeedLabel) {
				t.Errorf("label %q, want %q", label, SeedLabel)
			}
			for n, c := range files {
				if string(got[n]) != string(c) {
					t.Errorf("%s: got %q, want %q", n, got[n], c)
				}
			}
		})
	}
}

func TestSeedRefusesUnknownKinds(t *testing.T) {
	if err := WriteSeed(filepath.Join(t.TempDir(), "s"), "floppy", nil); err == nil {
		t.Fatal("unknown seed kind accepted")
	}
	if _, err := SeedFiles(image.Entry{Label: "x", UserData: "ignition"}, SeedInput{}); err == nil {
		t.Fatal("unknown user_data kind accepted")
	}
}

// formatArgs puts each option and its value on a line of their own.
func formatArgs(args []string) string {
	var b strings.Builder
	for i := 0; i < len(args); i++ {
		b.WriteString("  " + args[i])
		if strings.HasPrefix(args[i], "-") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			b.WriteString(" " + args[i+1])
			i++
		}
		b.WriteString("\n")
	}
	return b.String()
}
