package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// readSeed reads a seed volume back with independent tools (blkid for the
// label, xorriso for ISO9660 with Rock Ridge, mtools for FAT), so the test
// does not trust the library that wrote it.
func readSeed(path string) (map[string][]byte, string, error) {
	label, err := exec.Command("blkid", "-o", "value", "-s", "LABEL", path).Output()
	if err != nil {
		return nil, "", fmt.Errorf("blkid %s: %w", path, err)
	}
	typ, _ := exec.Command("blkid", "-o", "value", "-s", "TYPE", path).Output()
	dir, err := os.MkdirTemp("", "seed-read")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(dir)
	var cmd *exec.Cmd
	switch strings.TrimSpace(string(typ)) {
	case "iso9660":
		cmd = exec.Command("xorriso", "-indev", path, "-osirrox", "on", "-extract", "/", dir)
	case "vfat":
		cmd = exec.Command("mcopy", "-s", "-n", "-i", path, "::/", dir)
	default:
		return nil, "", fmt.Errorf("unexpected file system %q in %s", typ, path)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("%s: %w: %s", cmd.Args[0], err, out)
	}
	out := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, "", err
		}
		out[e.Name()] = b
	}
	return out, strings.TrimSpace(string(label)), nil
}
