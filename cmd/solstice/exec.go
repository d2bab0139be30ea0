package main

import (
	"context"
	"errors"
)

// execCmd is the "solstice exec" command (run a workflow locally, one fresh VM per job).
func execCmd() command {
	return command{"run a workflow locally, one fresh VM per job", func(ctx context.Context, env *cliEnv, args []string) error {
		return errors.New("not built yet")
	}}
}
