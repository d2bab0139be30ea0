package main

import (
	"context"
	"errors"
)

// orchestratorCmd is the "solstice orchestrator" command (run the orchestrator alone (multi-host setup)).
func orchestratorCmd() command {
	return command{"run the orchestrator alone (multi-host setup)", func(ctx context.Context, env *cliEnv, args []string) error {
		return errors.New("not built yet")
	}}
}
