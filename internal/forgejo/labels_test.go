package forgejo

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/vm/image"
)

func testCatalog(t *testing.T) *image.Catalog {
	t.Helper()
	f, err := os.Open("testdata/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cat, err := image.ParseCatalog(f, "testdata/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

func TestParseLabel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, name, scheme string
		err              string
	}{
		{in: "linux-test", name: "linux-test", scheme: "host"},
		{in: "linux-test:host", name: "linux-test", scheme: "host"},
		{in: " omnios-r151056:host ", name: "omnios-r151056", scheme: "host"},
		{in: "ubuntu-latest:docker://node:22-bookworm", err: "docker"},
		{in: "ubuntu:lxc://debian:bookworm", err: "lxc"},
		{in: "x:vm", err: "unknown scheme"},
		{in: "x:host:arg", err: "no argument"},
		{in: "", err: "no name"},
		{in: ":host", err: "no name"},
		{in: "a b", err: "spaces"},
	}
	for _, tt := range tests {
		name, scheme, err := ParseLabel(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseLabel(%q) error = %v, want one holding %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || name != tt.name || scheme != tt.scheme {
			t.Errorf("ParseLabel(%q) = %q, %q, %v; want %q, %q", tt.in, name, scheme, err, tt.name, tt.scheme)
		}
	}
}

func TestDefaultLabels(t *testing.T) {
	t.Parallel()
	got := DefaultLabels(testCatalog(t))
	want := []string{"linux-test:host", "omnios-r151056:host"}
	if !slices.Equal(got, want) {
		t.Errorf("DefaultLabels = %q, want %q", got, want)
	}
}

func TestCheckLabels(t *testing.T) {
	t.Parallel()
	cat := testCatalog(t)
	tests := []struct {
		in   []string
		want []string
		err  string
	}{
		{in: DefaultLabels(cat), want: []string{"linux-test", "omnios-r151056"}},
		{in: []string{"omnios-r151056"}, want: []string{"omnios-r151056"}},
		{in: []string{"linux-test", "ubuntu-latest:host"}, err: `"ubuntu-latest" has no image`},
		{in: []string{"linux-test:docker://alpine"}, err: "docker"},
		{in: []string{"linux-test", "linux-test:host"}, err: "twice"},
		{in: nil, err: "none"},
	}
	for _, tt := range tests {
		got, err := CheckLabels(tt.in, cat)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("CheckLabels(%q) error = %v, want one holding %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("CheckLabels(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
