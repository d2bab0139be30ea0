package main

import (
	"context"
	"errors"
)

// vmCmd is the "solstice vm" command (boot a VM from an image and run one command in it).
func vmCmd() command {
	return command{"boot a VM from an image and run one command in it", func(ctx context.Context, env *cliEnv, args []string) error {
		return errors.New("not built yet")
	}}
}
