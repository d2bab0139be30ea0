package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

// SeedLabel is the volume label the NoCloud datasource looks for.
const SeedLabel = "cidata"

// SeedInput is what goes into a NoCloud seed. It holds public data only:
// the login key's public half and the guest's SSH host key (which only
// authenticates the guest to us and is made fresh per VM).
type SeedInput struct {
	InstanceID    string
	Hostname      string
	AuthorizedKey string // "ssh-ed25519 AAAA…"
	// HostKeyPrivate and HostKeyPublic, when set, become the guest's
	// ed25519 SSH host key (cloud-config user-data only), so the host can
	// pin it and never talk to anything else listening on the port.
	HostKeyPrivate string // OpenSSH PEM
	HostKeyPublic  string
}

// SeedFiles returns the seed's files for entry: meta-data (JSON) and
// user-data (#cloud-config or a shell script, per entry.UserData).
func SeedFiles(e image.Entry, in SeedInput) (map[string][]byte, error) {
	meta, err := json.MarshalIndent(map[string]any{
		"instance-id":    in.InstanceID,
		"local-hostname": in.Hostname,
		"public-keys":    []string{in.AuthorizedKey},
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding meta-data: %w", err)
	}
	var user string
	switch e.UserData {
	case "cloud-config", "":
		user = cloudConfig(e, in)
	case "script":
		user = userScript(e, in)
	default:
		return nil, fmt.Errorf("image %s: unknown user_data kind %q (want cloud-config or script)", e.Label, e.UserData)
	}
	return map[string][]byte{"meta-data": append(meta, '\n'), "user-data": []byte(user)}, nil
}

// cloudConfig is the #cloud-config user-data: the login key for the login
// user and root, the pinned host key, nothing that waits for the network.
func cloudConfig(e image.Entry, in SeedInput) string {
	var b strings.Builder
	b.WriteString("#cloud-config\n")
	fmt.Fprintf(&b, "hostname: %s\n", in.Hostname)
	b.WriteString("disable_root: false\n")
	b.WriteString("ssh_pwauth: false\n")
	fmt.Fprintf(&b, "ssh_authorized_keys:\n  - %s\n", in.AuthorizedKey)
	if in.HostKeyPrivate != "" {
		b.WriteString("ssh_deletekeys: true\n")
		b.WriteString("ssh_genkeytypes: []\n")
		b.WriteString("ssh_keys:\n  ed25519_private: |\n")
		for _, l := range strings.Split(strings.TrimRight(in.HostKeyPrivate, "\n"), "\n") {
			fmt.Fprintf(&b, "    %s\n", l)
		}
		fmt.Fprintf(&b, "  ed25519_public: %s\n", in.HostKeyPublic)
	}
	return b.String()
}

// userScript is shell-script user-data for guests whose metadata agent
// runs a script instead of cloud-config (the illumos images): it installs
// the login key for the login user and for root.
func userScript(e image.Entry, in SeedInput) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	b.WriteString("# Solstice CI: install the job's login key.\n")
	b.WriteString("set -e\n")
	fmt.Fprintf(&b, "key='%s'\n", in.AuthorizedKey)
	users := []string{"root"}
	if e.User != "" && e.User != "root" {
		users = append(users, e.User)
	}
	for _, u := range users {
		home := "/root"
		if u != "root" {
			home = "/home/" + u
		}
		fmt.Fprintf(&b, "mkdir -p %s/.ssh && chmod 700 %s/.ssh\n", home, home)
		fmt.Fprintf(&b, "printf '%%s\\n' \"$key\" >> %s/.ssh/authorized_keys\n", home)
		fmt.Fprintf(&b, "chmod 600 %s/.ssh/authorized_keys\n", home)
		if u != "root" {
			fmt.Fprintf(&b, "chown -R %s %s/.ssh || true\n", u, home)
		}
	}
	fmt.Fprintf(&b, "hostname %s 2>/dev/null || true\n", in.Hostname)
	return b.String()
}

// WriteSeed writes files as a seed volume labelled cidata at path: ISO9660
// with Rock Ridge names when kind is "iso", FAT12 when kind is "fat" (the
// illumos metadata agent reads only FAT).
func WriteSeed(path, kind string, files map[string][]byte) error {
	switch kind {
	case "iso", "":
		return writeISO(path, files)
	case "fat":
		return writeFAT(path, files)
	}
	return fmt.Errorf("unknown seed kind %q (want iso or fat)", kind)
}

func writeISO(path string, files map[string][]byte) error {
	work, err := os.MkdirTemp(filepath.Dir(path), "iso-")
	if err != nil {
		return fmt.Errorf("making iso work folder: %w", err)
	}
	defer os.RemoveAll(work)
	size := int64(1 << 20)
	for _, c := range files {
		size += int64(len(c)) + 4096
	}
	d, err := diskfs.Create(path, size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("creating seed %s: %w", path, err)
	}
	defer d.Close()
	d.LogicalBlocksize = 2048
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeISO9660, VolumeLabel: SeedLabel, WorkDir: work})
	if err != nil {
		return fmt.Errorf("creating iso9660 in %s: %w", path, err)
	}
	if err := putFiles(fs, files); err != nil {
		return err
	}
	iso, ok := fs.(*iso9660.FileSystem)
	if !ok {
		return fmt.Errorf("iso9660 file system of unexpected type %T", fs)
	}
	if err := iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: SeedLabel}); err != nil {
		return fmt.Errorf("finalizing iso seed %s: %w", path, err)
	}
	return nil
}

func writeFAT(path string, files map[string][]byte) error {
	size := int64(4 << 20)
	d, err := diskfs.Create(path, size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("creating seed %s: %w", path, err)
	}
	defer d.Close()
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeFat12, VolumeLabel: strings.ToUpper(SeedLabel)})
	if err != nil {
		return fmt.Errorf("creating fat in %s: %w", path, err)
	}
	return putFiles(fs, files)
}

func putFiles(fs filesystem.FileSystem, files map[string][]byte) error {
	for name, content := range files {
		f, err := fs.OpenFile("/"+name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("creating %s in seed: %w", name, err)
		}
		if _, err := f.Write(content); err != nil {
			f.Close()
			return fmt.Errorf("writing %s in seed: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("closing %s in seed: %w", name, err)
		}
	}
	return nil
}
