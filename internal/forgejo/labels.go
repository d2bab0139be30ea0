package forgejo

import (
	"fmt"
	"strings"

	"github.com/solstice-ci/solstice/internal/vm/image"
)

// SchemeHost is the only label scheme Solstice CI serves: the job runs
// directly on the machine, which here is a fresh VM of the label's image.
const SchemeHost = "host"

// DefaultLabels are the runner's labels when none are configured: every
// label of the image catalog, as <label>:host.
func DefaultLabels(cat *image.Catalog) []string {
	names := cat.Labels()
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = n + ":" + SchemeHost
	}
	return out
}

// ParseLabel splits a runner label, name[:scheme[:arg]], as the Forgejo
// runner writes them. The scheme defaults to host. The docker and lxc
// schemes, and any other, are refused: Solstice CI runs every job in a VM
// of the image the name selects, never in a container.
func ParseLabel(s string) (name, scheme string, err error) {
	parts := strings.SplitN(strings.TrimSpace(s), ":", 3)
	name = parts[0]
	scheme = SchemeHost
	if len(parts) > 1 {
		scheme = parts[1]
	}
	switch {
	case name == "":
		return "", "", fmt.Errorf("label %q: no name", s)
	case strings.ContainsAny(name, " \t,"):
		return "", "", fmt.Errorf("label %q: the name may not hold spaces or commas", s)
	case scheme == "docker" || scheme == "lxc":
		return "", "", fmt.Errorf("label %q: the %s scheme is not supported: Solstice CI runs each job in a VM of the label's image; write %s:host", s, scheme, name)
	case scheme != SchemeHost:
		return "", "", fmt.Errorf("label %q: unknown scheme %q (only host is supported)", s, scheme)
	case len(parts) > 2 && parts[2] != "":
		return "", "", fmt.Errorf("label %q: the host scheme takes no argument", s)
	}
	return name, scheme, nil
}

// CheckLabels parses the runner's labels and checks that each names an
// image of the catalog. It returns the label names, in order: what
// Register and Declare send to the server.
func CheckLabels(labels []string, cat *image.Catalog) ([]string, error) {
	if len(labels) == 0 {
		return nil, fmt.Errorf("checking labels: none given")
	}
	names := make([]string, 0, len(labels))
	seen := map[string]bool{}
	for _, l := range labels {
		name, _, err := ParseLabel(l)
		if err != nil {
			return nil, fmt.Errorf("checking labels: %w", err)
		}
		if _, ok := cat.Lookup(name); !ok {
			return nil, fmt.Errorf("checking labels: label %q has no image in the catalog (it has %s)", name, strings.Join(cat.Labels(), ", "))
		}
		if seen[name] {
			return nil, fmt.Errorf("checking labels: label %q given twice", name)
		}
		seen[name] = true
		names = append(names, name)
	}
	return names, nil
}

// labelNames parses labels (name[:scheme[:arg]]) and returns their names,
// as the server wants them.
func labelNames(labels []string) ([]string, error) {
	names := make([]string, 0, len(labels))
	for _, l := range labels {
		name, _, err := ParseLabel(l)
		if err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}
