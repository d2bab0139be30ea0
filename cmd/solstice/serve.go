package main

import (
	"context"
	"errors"
)

// serveCmd is the "solstice serve" command (run everything in one process (embedded queue and store by default)).
func serveCmd() command {
	return command{"run everything in one process (embedded queue and store by default)", func(ctx context.Context, env *cliEnv, args []string) error {
		return errors.New("not built yet")
	}}
}
