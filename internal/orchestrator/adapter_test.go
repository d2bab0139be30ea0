package orchestrator_test

import (
	"context"
	"io"
	"runtime"

	"github.com/solstice-ci/solstice/internal/vm/image"
)

type imagesAdapter struct{}

func (imagesAdapter) Resolve(_ context.Context, label string, _ io.Writer) (image.Entry, image.Local, error) {
	return image.Entry{Label: label, OS: runtime.GOOS, Arch: runtime.GOARCH}, image.Local{Disk: "/dev/null"}, nil
}
