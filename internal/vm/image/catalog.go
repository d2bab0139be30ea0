package image

import (
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"regexp"
	"sort"

	"go.yaml.in/yaml/v3"
)

//go:embed catalog.yaml
var defaultCatalog []byte

// Catalog maps runs-on labels to images.
type Catalog struct {
	entries map[string]Entry
}

// DefaultCatalog is the catalog shipped with Solstice CI.
func DefaultCatalog() (*Catalog, error) {
	return ParseCatalog(bytes.NewReader(defaultCatalog), "built-in catalog")
}

var labelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseCatalog reads a catalog file; name is used in errors.
func ParseCatalog(r io.Reader, name string) (*Catalog, error) {
	var doc struct {
		Images []Entry `yaml:"images"`
	}
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	c := &Catalog{entries: map[string]Entry{}}
	for i, e := range doc.Images {
		if err := e.Validate(); err != nil {
			return nil, fmt.Errorf("%s: images[%d]: %w", name, i, err)
		}
		if _, dup := c.entries[e.Label]; dup {
			return nil, fmt.Errorf("%s: images[%d]: label %q listed twice", name, i, e.Label)
		}
		c.entries[e.Label] = e
	}
	return c, nil
}

// Validate checks one entry and names the first bad field.
func (e Entry) Validate() error {
	bad := func(field, why string) error { return fmt.Errorf("image %q: %s: %s", e.Label, field, why) }
	if !labelRE.MatchString(e.Label) {
		return bad("label", "must be lower-case letters, digits, '.', '_' or '-'")
	}
	if (e.URL == "") == (e.Build == "") {
		return bad("url", "exactly one of url and build must be set")
	}
	if e.URL != "" && e.SHA256 == "" && e.SHA256URL == "" {
		return bad("sha256", "a download needs sha256 or sha256_url")
	}
	if e.SHA256 != "" && !hexRE.MatchString(e.SHA256) {
		return bad("sha256", "must be 64 lower-case hex digits")
	}
	checks := []struct {
		field, val string
		allowed    []string
	}{
		{"format", e.Format, []string{"qcow2", "raw"}},
		{"compression", e.Compression, []string{"", "zst", "xz"}},
		{"os", e.OS, []string{"linux", "illumos", "freebsd"}},
		{"arch", e.Arch, []string{"amd64", "arm64"}},
		{"firmware", e.Firmware, []string{"bios", "uefi"}},
		{"seed", e.Seed, []string{"iso", "fat"}},
		{"user_data", e.UserData, []string{"cloud-config", "script"}},
		{"nic", e.NIC, []string{"virtio-net-pci", "e1000"}},
		{"disk", e.Disk, []string{"virtio", "sata"}},
		{"boot", e.Boot, []string{"", "disk", "kernel"}},
		{"network", e.Network, []string{"", "egress", "none"}},
	}
	for _, c := range checks {
		ok := false
		for _, a := range c.allowed {
			ok = ok || c.val == a
		}
		if !ok {
			return bad(c.field, fmt.Sprintf("%q is not one of %q", c.val, c.allowed))
		}
	}
	if e.Boot == "kernel" && e.Build == "" {
		return bad("boot", "direct kernel boot needs a locally built image (build)")
	}
	if e.User == "" {
		return bad("user", "must be set")
	}
	if e.CPUs < 1 || e.CPUs > 64 {
		return bad("cpus", "must be 1 to 64")
	}
	if e.MemoryMB < 128 {
		return bad("memory_mb", "must be at least 128")
	}
	if e.DiskGB < 0 || e.BootTimeoutSeconds < 0 {
		return bad("disk_gb", "sizes and timeouts cannot be negative")
	}
	return nil
}

// Lookup returns the entry for label.
func (c *Catalog) Lookup(label string) (Entry, bool) {
	e, ok := c.entries[label]
	return e, ok
}

// Entries returns every entry, sorted by label.
func (c *Catalog) Entries() []Entry {
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out
}

// Labels returns every label, sorted.
func (c *Catalog) Labels() []string {
	var out []string
	for _, e := range c.Entries() {
		out = append(out, e.Label)
	}
	return out
}
