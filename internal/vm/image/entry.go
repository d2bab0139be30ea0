// Package image is the image catalog: which VM image serves which runs-on
// label, how to fetch and verify it, and how to boot it. It also pulls
// images into the local cache and builds the linux-test image.
package image

// Entry is one image of the catalog, keyed by its runs-on label.
type Entry struct {
	Label string `yaml:"label" json:"label"`
	// URL to download from; empty for images built locally (Build is set).
	URL string `yaml:"url,omitempty" json:"url,omitempty"`
	// SHA256 of the file at URL (before decompression), hex.
	SHA256 string `yaml:"sha256,omitempty" json:"sha256,omitempty"`
	// SHA256URL names a checksum file published next to the download
	// (sha256sum or BSD "SHA256 (name) = hex" lines), used when SHA256 is
	// empty. One of the two is required to pull.
	SHA256URL string `yaml:"sha256_url,omitempty" json:"sha256_url,omitempty"`
	// Format of the disk image after decompression: "qcow2" or "raw".
	Format string `yaml:"format" json:"format"`
	// Compression of the download: "", "zst" or "xz".
	Compression string `yaml:"compression,omitempty" json:"compression,omitempty"`
	// Build names a local recipe ("linux-test") instead of a download.
	Build string `yaml:"build,omitempty" json:"build,omitempty"`

	OS   string `yaml:"os" json:"os"`     // linux, illumos, freebsd (GOOS of the agent)
	Arch string `yaml:"arch" json:"arch"` // amd64, arm64 (GOARCH of the agent)
	// Firmware: "bios" or "uefi".
	Firmware string `yaml:"firmware" json:"firmware"`
	// Seed: "iso" (ISO9660, label cidata) or "fat" (FAT, label cidata; the
	// illumos metadata agent reads only FAT).
	Seed string `yaml:"seed" json:"seed"`
	// UserData: "cloud-config" or "script".
	UserData string `yaml:"user_data" json:"user_data"`
	// User is the login user; the agent runs as root (through sudo or pfexec
	// when User is not root).
	User string `yaml:"user" json:"user"`
	// NIC model: "virtio-net-pci" or "e1000".
	NIC string `yaml:"nic" json:"nic"`
	// Disk bus: "virtio" (virtio-blk-pci) or "sata" (ahci).
	Disk string `yaml:"disk" json:"disk"`

	CPUs     int `yaml:"cpus" json:"cpus"`
	MemoryMB int `yaml:"memory_mb" json:"memory_mb"`
	DiskGB   int `yaml:"disk_gb" json:"disk_gb"`
	// BootTimeoutSeconds bounds the time from start to SSH under TCG; KVM
	// hosts use a quarter of it.
	BootTimeoutSeconds int `yaml:"boot_timeout_seconds,omitempty" json:"boot_timeout_seconds,omitempty"`
	// Shutdown is the in-guest command that powers the guest off.
	Shutdown string `yaml:"shutdown" json:"shutdown"`
	// Boot is "disk" (firmware boots the disk; the default) or "kernel":
	// QEMU's direct kernel boot with the vmlinuz and initrd.img the cache
	// keeps next to the disk (the linux-test image has no boot loader).
	Boot string `yaml:"boot,omitempty" json:"boot,omitempty"`
	// KernelArgs is the kernel command line for Boot "kernel".
	KernelArgs string `yaml:"kernel_args,omitempty" json:"kernel_args,omitempty"`
	// Network is the default network mode: "egress" or "none".
	Network string `yaml:"network,omitempty" json:"network,omitempty"`
	Notes   string `yaml:"notes,omitempty" json:"notes,omitempty"`
}
