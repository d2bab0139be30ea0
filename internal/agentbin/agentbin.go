// Package agentbin carries the solstice-runner binaries for every guest
// OS/arch, embedded into the solstice binary by "make build".
package agentbin

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:embed bin
var files embed.FS

// Get returns the embedded agent for goos/goarch ("illumos", "amd64"), or an
// error naming what is missing (run "make build" to embed the agents).
func Get(goos, goarch string) ([]byte, error) {
	name := fmt.Sprintf("bin/solstice-runner-%s-%s", goos, goarch)
	b, err := fs.ReadFile(files, name)
	if err != nil {
		return nil, fmt.Errorf("agent for %s/%s is not embedded in this binary (build it with make build): %w", goos, goarch, err)
	}
	return b, nil
}
