package main

import (
	"context"
	"errors"
)

// forgejoCmd is the "solstice forgejo" command (the Forgejo Actions runner daemon (register, run)).
func forgejoCmd() command {
	return command{"the Forgejo Actions runner daemon (register, run)", func(ctx context.Context, env *cliEnv, args []string) error {
		return errors.New("not built yet")
	}}
}
