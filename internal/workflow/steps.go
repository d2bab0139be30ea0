package workflow

import (
	"strconv"
	"strings"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/expr"
)

// checkoutInputs are the actions/checkout inputs the agent's own checkout
// honours (fetch-depth, submodules, path, token) or that change nothing
// for a fresh VM (clean, persist-credentials, fetch-tags, show-progress,
// set-safe-directory). ref and repository are accepted only when they
// name the job's own commit and repository; lfs only when false.
func checkoutInputs() []string {
	return []string{"fetch-depth", "submodules", "path", "token", "clean", "persist-credentials",
		"fetch-tags", "show-progress", "set-safe-directory"}
}

// steps translates the job's steps and derives the checkout options.
func (t *translator) steps() ([]agentapi.Step, agentapi.Checkout, error) {
	checkout := agentapi.Checkout{Skip: true}
	out := make([]agentapi.Step, 0, len(t.j.Steps))
	for _, s := range t.j.Steps {
		st, err := t.step(s)
		if err != nil {
			return nil, checkout, err
		}
		if st.IsCheckout() && checkout.Skip {
			checkout.Skip = false
			if err := t.checkoutOptions(s, st, &checkout); err != nil {
				return nil, checkout, err
			}
		}
		out = append(out, st)
	}
	return out, checkout, nil
}

// step translates one step.
func (t *translator) step(s *Step) (agentapi.Step, error) {
	where := func(pos Pos, format string, args ...any) error { return t.stepErrorf(s, pos, format, args...) }
	st := agentapi.Step{ID: s.ID.Value}
	var err error

	if s.Name.IsSet() && s.Name.Value != "" {
		if st.Name, err = t.partial(s.Name, where, "name"); err != nil {
			return st, err
		}
	} else {
		var b expr.TemplateBuilder
		if s.Uses.IsSet() {
			b.Text("Run " + s.Uses.Value)
		} else {
			b.Text("Run " + firstLine(s.Run.Value))
		}
		st.Name = b.String()
	}
	if st.If, err = t.condition(s); err != nil {
		return st, err
	}
	env := map[string]string{}
	if err := t.addEnv(env, s.Env, "env", where); err != nil {
		return st, err
	}
	if len(env) > 0 {
		st.Env = env
	}
	if s.TimeoutMinutes.IsSet() {
		if st.TimeoutMinutes, err = t.minutesAt(s.TimeoutMinutes, "timeout-minutes", where); err != nil {
			return st, err
		}
	}
	if s.ContinueOnError.IsSet() {
		if st.ContinueOnError, err = t.booleanAt(s.ContinueOnError, "continue-on-error", where); err != nil {
			return st, err
		}
	}

	if s.Uses.IsSet() {
		return t.checkoutStep(s, st, where)
	}
	if st.Run, err = t.partial(s.Run, where, "run"); err != nil {
		return st, err
	}
	shell := firstSet(s.Shell, t.j.Defaults.Shell, t.w.Defaults.Shell)
	if st.Shell, err = t.partial(shell, where, "shell"); err != nil {
		return st, err
	}
	dir := firstSet(s.WorkingDirectory, t.j.Defaults.WorkingDirectory, t.w.Defaults.WorkingDirectory)
	if st.WorkingDirectory, err = t.partial(dir, where, "working-directory"); err != nil {
		return st, err
	}
	return st, nil
}

// firstSet returns the first given value.
func firstSet(vs ...Text) Text {
	for _, v := range vs {
		if v.IsSet() {
			return v
		}
	}
	return Text{}
}

// firstLine is the first non-empty line of a script, for default names.
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// condition translates a step's if. A condition over host contexts only
// (and no status function) is decided here: "" (success()) when true,
// "false" when false. Others go to the agent as written.
func (t *translator) condition(s *Step) (string, error) {
	cond := strings.TrimSpace(s.If.Value)
	if cond == "" {
		return "", nil
	}
	var (
		hostable bool
		err      error
	)
	if strings.Contains(cond, "${{") {
		hostable, err = onHostTemplate(cond)
	} else {
		if err = expr.Check(cond); err == nil {
			hostable, err = onHost(cond)
		}
	}
	if err != nil {
		return "", t.stepErrorf(s, s.If.Pos, "if: %v", err)
	}
	if !hostable {
		return cond, nil
	}
	ok, err := expr.EvaluateCondition(cond, t.host)
	if err != nil {
		return "", t.stepErrorf(s, s.If.Pos, "if: %v", err)
	}
	if ok {
		return "", nil
	}
	return "false", nil
}

// checkoutStep translates an actions/checkout step into the agent's own
// checkout.
func (t *translator) checkoutStep(s *Step, st agentapi.Step, where func(Pos, string, ...any) error) (agentapi.Step, error) {
	name, ref, _ := strings.Cut(s.Uses.Value, "@")
	st.Uses = strings.ToLower(name) + "@" + ref
	allowed := checkoutInputs()
	for _, in := range s.With {
		key := strings.ToLower(in.Name)
		switch {
		case key == "ref" || key == "repository":
			if err := t.ownCheckout(s, in); err != nil {
				return st, err
			}
			continue
		case key == "lfs":
			v, err := t.hostOnly(in.Value, "with.lfs", where)
			if err != nil {
				return st, err
			}
			if b, ok := toBool(v); !ok || b {
				return st, where(in.Value.Pos, "with.lfs: %q is not supported: the agent's checkout does not fetch Git LFS objects", in.Value.Value)
			}
			continue
		case !containsFold(allowed, key):
			return st, where(in.Value.Pos, "actions/checkout input %q is not supported by the agent's own checkout (supported: %s)", in.Name, strings.Join(allowed, ", "))
		}
		v, err := t.partial(in.Value, where, "with."+in.Name)
		if err != nil {
			return st, err
		}
		if st.With == nil {
			st.With = map[string]string{}
		}
		st.With[key] = v
	}
	return st, nil
}

// ownCheckout accepts ref and repository only when they name what the job
// checks out anyway: its own commit (or ref) and repository.
func (t *translator) ownCheckout(s *Step, in Var) error {
	where := func(pos Pos, format string, args ...any) error { return t.stepErrorf(s, pos, format, args...) }
	v, err := t.hostOnly(in.Value, "with."+in.Name, where)
	if err != nil {
		return err
	}
	got := expr.ToString(v)
	gh, _ := t.host.Values["github"].(map[string]any)
	var own []string
	if strings.EqualFold(in.Name, "ref") {
		for _, k := range []string{"sha", "ref", "ref_name"} {
			if x, ok := gh[k].(string); ok && x != "" {
				own = append(own, x)
			}
		}
	} else if x, ok := gh["repository"].(string); ok && x != "" {
		own = append(own, x)
	}
	if got == "" || containsFold(own, got) {
		return nil
	}
	return where(in.Value.Pos, "actions/checkout with %s: %q is not supported: the agent checks out the job's own repository at the job's commit only", in.Name, got)
}

// checkoutOptions copies the first checkout step's fetch-depth and
// submodules into the job's checkout options when they are constants.
func (t *translator) checkoutOptions(s *Step, st agentapi.Step, c *agentapi.Checkout) error {
	if v, ok := st.With["fetch-depth"]; ok && !strings.Contains(v, "${{") {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return t.stepErrorf(s, s.Pos, "with.fetch-depth must be a whole number of 0 or more, not %q", v)
		}
		c.FetchDepth = &n
	}
	if v, ok := st.With["submodules"]; ok && !strings.Contains(v, "${{") {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "", "false":
		case "true":
			c.Submodules = "true"
		case "recursive":
			c.Submodules = "recursive"
		default:
			return t.stepErrorf(s, s.Pos, "with.submodules must be true, false or recursive, not %q", v)
		}
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
