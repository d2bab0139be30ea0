package main

import (
	"context"
	"errors"
)

// imageCmd is the "solstice image" command (manage VM images (list, pull, build)).
func imageCmd() command {
	return command{"manage VM images (list, pull, build)", func(ctx context.Context, env *cliEnv, args []string) error {
		return errors.New("not built yet")
	}}
}
