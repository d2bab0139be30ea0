package workflow

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/expr"
)

// DefaultTimeoutMinutes is GitHub's job timeout when none is given.
const DefaultTimeoutMinutes = 360

// HostContexts are the contexts the host knows when it makes a job: the
// translator evaluates expressions that use only these (and no status
// function); everything else is left to the agent.
func HostContexts() []string {
	return []string{"github", "vars", "matrix", "strategy", "needs", "inputs"}
}

// jobIfContexts are the contexts a job-level if may use (GitHub allows
// github, needs, vars, inputs; matrix and strategy are known here too).
func jobIfContexts() []string { return HostContexts() }

// Input is what Translate needs to make one job of one matrix leg.
type Input struct {
	Workflow *Workflow
	Job      *Job
	// Matrix is one combination from Job.Matrix; empty for a job without
	// a matrix.
	Matrix map[string]any
	// Index and Total are the leg's position among the job's combinations
	// and their count (strategy.job-index and job-total); Total 0 means 1.
	Index, Total int
	// Contexts holds github, vars, needs and inputs. needs.<id>.result
	// decides the status functions of the job's if.
	Contexts map[string]any
	// KeepName takes the job's name as final: no matrix values are
	// appended. Forgejo payloads need it, as the server already did that.
	KeepName bool
	// Labels are the labels this runner serves. When set, RunsOn is the
	// first runs-on label among them (an error if there is none); when
	// empty, RunsOn is the first runs-on label other than self-hosted.
	Labels []string
}

// Translation is one job of one matrix leg as the agent runs it: what a
// jobspec.JobRequest carries.
type Translation struct {
	// Name is the display name: the job's name (or id) with its matrix
	// values, like GitHub: "build (1.22, ubuntu-latest)".
	Name string
	// RunsOn is the label to run on; RunsOnAll all runs-on labels.
	RunsOn    string
	RunsOnAll []string
	// Skip is true when the job's if is false; the other fields but Name
	// and Contexts are then empty.
	Skip  bool
	Steps []agentapi.Step
	// Env is the workflow env overlaid with the job env. Values may hold
	// ${{ }} for the agent (secrets, say).
	Env map[string]string
	// Outputs maps job output names to templates the agent evaluates after
	// the last step.
	Outputs map[string]string
	// Contexts are the host contexts: github, vars, needs and inputs from
	// Input.Contexts, plus matrix and strategy. They go into the JobRequest
	// for the agent. Other contexts given in Input.Contexts (secrets, env…)
	// are dropped, and so are the secret keys of github (token and
	// *_token): the agent must add the job token to its github context
	// itself, from the sealed secrets.
	Contexts        map[string]any
	TimeoutMinutes  float64
	ContinueOnError bool
	Checkout        agentapi.Checkout
}

// translator carries the state of one Translate call.
type translator struct {
	in   Input
	w    *Workflow
	j    *Job
	host *expr.Context
}

// Translate makes one job of one matrix leg. Errors name the workflow
// file, the position, the job and, for step problems, the step (its number
// and its name or id): a uses: other than actions/checkout, services:,
// container:, a reusable workflow call, or an expression that cannot be
// evaluated.
func Translate(in Input) (*Translation, error) {
	if in.Workflow == nil || in.Job == nil {
		return nil, fmt.Errorf("translating: Input needs a Workflow and a Job")
	}
	t := &translator{in: in, w: in.Workflow, j: in.Job}
	if err := t.refuse(); err != nil {
		return nil, err
	}
	ctx, err := t.contexts()
	if err != nil {
		return nil, err
	}
	t.host = &expr.Context{Values: ctx}
	out := &Translation{Contexts: ctx}

	run, err := in.Job.ShouldRun(ctx)
	if err != nil {
		return nil, err
	}
	if out.Name, err = t.name(); err != nil {
		if !run {
			out.Name = in.Job.ID
		} else {
			return nil, err
		}
	}
	if !run {
		out.Skip = true
		return out, nil
	}
	if out.RunsOnAll, out.RunsOn, err = t.runsOn(); err != nil {
		return nil, err
	}
	if out.Env, err = t.env(); err != nil {
		return nil, err
	}
	if out.Steps, out.Checkout, err = t.steps(); err != nil {
		return nil, err
	}
	if out.Outputs, err = t.outputs(); err != nil {
		return nil, err
	}
	out.TimeoutMinutes = DefaultTimeoutMinutes
	if in.Job.TimeoutMinutes.IsSet() {
		if out.TimeoutMinutes, err = t.minutes(in.Job.TimeoutMinutes, "timeout-minutes"); err != nil {
			return nil, err
		}
	}
	if in.Job.ContinueOnError.IsSet() {
		if out.ContinueOnError, err = t.boolean(in.Job.ContinueOnError, "continue-on-error"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// errorf makes an error about the job at pos.
func (t *translator) errorf(pos Pos, format string, args ...any) error {
	if pos.Line == 0 {
		pos = t.j.Pos
	}
	return errorAt(t.w.File, pos, "job %q: "+format, append([]any{t.j.ID}, args...)...)
}

// stepErrorf makes an error about a step at pos.
func (t *translator) stepErrorf(s *Step, pos Pos, format string, args ...any) error {
	if pos.Line == 0 {
		pos = s.Pos
	}
	return errorAt(t.w.File, pos, "job %q, %s: "+format, append([]any{t.j.ID, s.describe()}, args...)...)
}

// refuse rejects what the guest cannot do.
func (t *translator) refuse() error {
	j := t.j
	switch {
	case j.usesCall.IsSet():
		return t.errorf(j.usesCall.Pos, "calls the reusable workflow %s, which Solstice CI does not support: copy its jobs into this workflow", j.usesCall.Value)
	case j.container.Line > 0:
		return t.errorf(j.container, "container: is not supported: Solstice CI runs each job in a VM of the runs-on image, not in a container")
	case j.services.Line > 0:
		return t.errorf(j.services, "services: is not supported: Solstice CI runs no service containers; start what the job needs in a run: step")
	case j.snapshot.Line > 0:
		return t.errorf(j.snapshot, "snapshot: is not supported: it makes GitHub-hosted runner images")
	case len(j.Steps) == 0:
		return t.errorf(j.Pos, "has no steps")
	}
	ids := map[string]*Step{}
	for _, s := range j.Steps {
		if name, _, _ := strings.Cut(s.Uses.Value, "@"); strings.EqualFold(name, "actions/checkout") && !isCheckout(s.Uses.Value) {
			return t.stepErrorf(s, s.Uses.Pos, "uses: %s needs a version, as in actions/checkout@v4", s.Uses.Value)
		}
		if s.Uses.IsSet() && !isCheckout(s.Uses.Value) {
			return t.stepErrorf(s, s.Uses.Pos, "uses: %s is not supported: Solstice CI runs run: steps and actions/checkout only (the guest has no runtime for actions); write the step as a run: script", s.Uses.Value)
		}
		if id := strings.ToLower(s.ID.Value); id != "" {
			if prev, dup := ids[id]; dup {
				return t.stepErrorf(s, s.ID.Pos, "the step id %q is already used by %s", s.ID.Value, prev.describe())
			}
			ids[id] = s
		}
	}
	return nil
}

// isCheckout reports whether uses names actions/checkout at some ref.
func isCheckout(uses string) bool {
	name, ref, ok := strings.Cut(uses, "@")
	return ok && ref != "" && strings.EqualFold(name, "actions/checkout")
}

// contexts builds the host contexts: the given ones plus matrix and
// strategy.
func (t *translator) contexts() (map[string]any, error) {
	ctx := make(map[string]any, len(t.in.Contexts)+2)
	host := HostContexts()
	for k, v := range t.in.Contexts {
		k = strings.ToLower(k)
		if !slices.Contains(host, k) {
			continue // secrets, env, steps… are never the host's
		}
		if k == "github" {
			v = withoutTokens(v)
		}
		ctx[k] = v
	}
	m := map[string]any{}
	maps.Copy(m, t.in.Matrix)
	ctx["matrix"] = m

	total := max(t.in.Total, 1)
	strategy := map[string]any{
		"fail-fast":    true,
		"job-index":    float64(t.in.Index),
		"job-total":    float64(total),
		"max-parallel": float64(total),
	}
	if s := t.j.Strategy; s != nil {
		c := &expr.Context{Values: ctx}
		if s.FailFast.IsSet() {
			v, err := t.value(c, s.FailFast, "strategy.fail-fast", matrixContexts())
			if err != nil {
				return nil, err
			}
			b, ok := toBool(v)
			if !ok {
				return nil, t.errorf(s.FailFast.Pos, "strategy.fail-fast must be true or false, not %q", expr.ToString(v))
			}
			strategy["fail-fast"] = b
		}
		if s.MaxParallel.IsSet() {
			v, err := t.value(c, s.MaxParallel, "strategy.max-parallel", matrixContexts())
			if err != nil {
				return nil, err
			}
			n, ok := toNumber(v)
			if !ok || n < 1 {
				return nil, t.errorf(s.MaxParallel.Pos, "strategy.max-parallel must be a number of at least 1, not %q", expr.ToString(v))
			}
			strategy["max-parallel"] = n
		}
	}
	ctx["strategy"] = strategy
	return ctx, nil
}

// withoutTokens returns the github context without its secret keys (the
// job token and runtime tokens): the contexts travel in the clear, and the
// agent gets the token sealed.
func withoutTokens(v any) any {
	gh, ok := v.(map[string]any)
	if !ok {
		return v
	}
	out := make(map[string]any, len(gh))
	for k, x := range gh {
		if !isTokenKey(k) {
			out[k] = x
		}
	}
	return out
}

// isTokenKey reports whether a github context key holds a secret.
func isTokenKey(k string) bool {
	k = strings.ToLower(k)
	return k == "token" || strings.HasSuffix(k, "_token")
}

// value evaluates a template fully on the host. Only the allowed contexts
// may appear.
func (t *translator) value(c *expr.Context, v Text, field string, allowed []string) (any, error) {
	if err := checkContexts(v.Value, allowed); err != nil {
		return nil, t.errorf(v.Pos, "%s: %v", field, err)
	}
	out, err := expr.EvaluateTemplate(v.Value, c)
	if err != nil {
		return nil, t.errorf(v.Pos, "%s: %v", field, err)
	}
	return out, nil
}

// ShouldRun evaluates the job's if: with the host contexts (github, needs,
// vars, inputs; matrix and strategy when known). The status functions see
// the results of the job's needs in contexts["needs"]: cancelled when one
// was cancelled, else failure when one failed, else skipped when one was
// skipped (success(), failure() and cancelled() are then all false), else
// success. Call it before Matrix: a job whose needs failed is skipped
// before its matrix (which may read their outputs) is expanded.
func (j *Job) ShouldRun(contexts map[string]any) (bool, error) {
	ctx := make(map[string]any, len(contexts))
	for k, v := range contexts {
		ctx[strings.ToLower(k)] = v
	}
	status := j.needsStatus(ctx["needs"])
	if j.If.IsSet() {
		if err := checkCondition(j.If.Value, jobIfContexts()); err != nil {
			return false, errorAt(j.file, j.If.Pos, "job %q: if: %v", j.ID, err)
		}
	}
	ok, err := expr.EvaluateCondition(j.If.Value, &expr.Context{Values: ctx, Status: status})
	if err != nil {
		return false, errorAt(j.file, j.If.Pos, "job %q: if: %v", j.ID, err)
	}
	return ok, nil
}

// needsStatus derives the job status the status functions see from the
// results in the needs context.
func (j *Job) needsStatus(needs any) string {
	m, _ := needs.(map[string]any)
	var names []string
	for _, n := range j.Needs {
		names = append(names, n.Value)
	}
	if len(names) == 0 {
		names = slices.Collect(maps.Keys(m))
	}
	failed, skipped := false, false
	for _, n := range names {
		var result string
		for k, v := range m {
			if strings.EqualFold(k, n) {
				if e, ok := v.(map[string]any); ok {
					result, _ = e["result"].(string)
				}
			}
		}
		switch strings.ToLower(result) {
		case expr.StatusCancelled:
			return expr.StatusCancelled
		case expr.StatusFailure:
			failed = true
		case agentapi.ResultSkipped:
			skipped = true
		}
	}
	switch {
	case failed:
		return expr.StatusFailure
	case skipped:
		return agentapi.ResultSkipped
	}
	return expr.StatusSuccess
}

// checkCondition checks an if: condition's expressions and that it uses
// only the allowed contexts (status functions are fine).
func checkCondition(cond string, allowed []string) error {
	src := cond
	var ctxs []string
	var err error
	if strings.Contains(src, "${{") {
		if err = expr.CheckTemplate(src); err != nil {
			return err
		}
		ctxs, _, err = expr.TemplateReferences(src)
	} else {
		if err = expr.Check(src); err != nil {
			return err
		}
		ctxs, _, err = expr.References(src)
	}
	if err != nil {
		return err
	}
	for _, c := range ctxs {
		if !slices.Contains(allowed, c) {
			return fmt.Errorf("%q uses the %s context, but only %s are available here", cond, c, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// name makes the display name.
func (t *translator) name() (string, error) {
	name := t.j.ID
	usesMatrix := false
	if t.j.Name.IsSet() && t.j.Name.Value != "" {
		v, err := t.value(t.host, t.j.Name, "name", HostContexts())
		if err != nil {
			return "", err
		}
		name = expr.ToString(v)
		ctxs, _, _ := expr.TemplateReferences(t.j.Name.Value)
		usesMatrix = slices.Contains(ctxs, "matrix")
	}
	if t.in.KeepName || usesMatrix || len(t.in.Matrix) == 0 {
		return name, nil
	}
	var vals []string
	for _, k := range t.matrixOrder() {
		vals = append(vals, displayValue(lookup(t.in.Matrix, k)))
	}
	return name + " (" + strings.Join(vals, ", ") + ")", nil
}

// matrixOrder lists the keys of the leg's matrix: in the order the file
// declares them, then any others sorted.
func (t *translator) matrixOrder() []string {
	var keys []string
	seen := map[string]bool{}
	for _, k := range t.j.matrixKeys {
		for mk := range t.in.Matrix {
			if strings.EqualFold(mk, k) && !seen[mk] {
				seen[mk] = true
				keys = append(keys, mk)
			}
		}
	}
	var rest []string
	for mk := range t.in.Matrix {
		if !seen[mk] {
			rest = append(rest, mk)
		}
	}
	slices.Sort(rest)
	return append(keys, rest...)
}

// displayValue renders a matrix value for a job name.
func displayValue(v any) string {
	switch v.(type) {
	case map[string]any, []any:
		b, err := json.Marshal(v)
		if err == nil {
			return string(b)
		}
	}
	return expr.ToString(v)
}

// runsOn evaluates the runs-on labels and picks the one to run on.
func (t *translator) runsOn() ([]string, string, error) {
	var labels []string
	add := func(v any, pos Pos) error {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				s, ok := e.(string)
				if !ok {
					return t.errorf(pos, "runs-on: a label must be a string, not %s", describe(e))
				}
				labels = append(labels, s)
			}
		case string:
			labels = append(labels, x)
		default:
			return t.errorf(pos, "runs-on must be a label or a list of labels, not %s", describe(v))
		}
		return nil
	}
	if t.j.RunsOnExpr.IsSet() {
		v, err := t.value(t.host, t.j.RunsOnExpr, "runs-on", HostContexts())
		if err != nil {
			return nil, "", err
		}
		if err := add(v, t.j.RunsOnExpr.Pos); err != nil {
			return nil, "", err
		}
	}
	for _, l := range t.j.RunsOn {
		v, err := t.value(t.host, l, "runs-on", HostContexts())
		if err != nil {
			return nil, "", err
		}
		if err := add(v, l.Pos); err != nil {
			return nil, "", err
		}
	}
	labels = slices.DeleteFunc(labels, func(s string) bool { return strings.TrimSpace(s) == "" })
	if len(labels) == 0 {
		return nil, "", t.errorf(t.j.Pos, "runs-on names no label")
	}
	if len(t.in.Labels) > 0 {
		for _, l := range labels {
			for _, served := range t.in.Labels {
				if strings.EqualFold(l, served) {
					return labels, served, nil
				}
			}
		}
		return nil, "", t.errorf(t.j.Pos, "runs-on %s names no label this runner serves (%s)", strings.Join(labels, ", "), strings.Join(t.in.Labels, ", "))
	}
	for _, l := range labels {
		if !strings.EqualFold(l, "self-hosted") {
			return labels, l, nil
		}
	}
	return labels, labels[0], nil
}

// partial evaluates on the host every ${{ }} of v that uses only host
// contexts and no status function, and keeps the others as expressions.
// Substituted values can never be read as expressions again.
func (t *translator) partial(v Text, where func(pos Pos, format string, args ...any) error, field string) (string, error) {
	if !strings.Contains(v.Value, "${{") {
		return v.Value, nil
	}
	if err := expr.CheckTemplate(v.Value); err != nil {
		return "", where(v.Pos, "%s: %v", field, err)
	}
	segs, err := expr.SplitTemplate(v.Value)
	if err != nil {
		return "", where(v.Pos, "%s: %v", field, err)
	}
	var b expr.TemplateBuilder
	for _, seg := range segs {
		if !seg.IsExpression() {
			b.Text(seg.Text)
			continue
		}
		hostable, err := onHost(seg.Expression)
		if err != nil {
			return "", where(v.Pos, "%s: %v", field, err)
		}
		if !hostable {
			b.Expression(seg.Expression)
			continue
		}
		val, err := expr.Evaluate(seg.Expression, t.host)
		if err != nil {
			return "", where(v.Pos, "%s: %v", field, err)
		}
		b.Text(expr.ToString(val))
	}
	return b.String(), nil
}

// onHost reports whether an expression uses only host contexts and no
// status function.
func onHost(src string) (bool, error) {
	ctxs, fns, err := expr.References(src)
	if err != nil {
		return false, err
	}
	host := HostContexts()
	for _, c := range ctxs {
		if !slices.Contains(host, c) {
			return false, nil
		}
	}
	for _, f := range fns {
		if isStatusFunction(f) {
			return false, nil
		}
	}
	// github.token is a secret: the host does not have it, the agent does.
	if slices.Contains(ctxs, "github") && strings.Contains(strings.ToLower(src), "token") {
		return false, nil
	}
	return true, nil
}

// env is the workflow env overlaid with the job env.
func (t *translator) env() (map[string]string, error) {
	out := map[string]string{}
	if err := t.addEnv(out, t.w.Env, "env", t.errorf); err != nil {
		return nil, err
	}
	if err := t.addEnv(out, t.j.Env, "env", t.errorf); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// addEnv adds an env section to out, partially evaluated.
func (t *translator) addEnv(out map[string]string, e Env, field string, where func(Pos, string, ...any) error) error {
	if e.Expr.IsSet() {
		hostable, err := onHostTemplate(e.Expr.Value)
		if err != nil {
			return where(e.Expr.Pos, "%s: %v", field, err)
		}
		if !hostable {
			return where(e.Expr.Pos, "%s: %q is one expression over contexts known only while the job runs; write the variables out one by one", field, e.Expr.Value)
		}
		v, err := expr.EvaluateTemplate(e.Expr.Value, t.host)
		if err != nil {
			return where(e.Expr.Pos, "%s: %v", field, err)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return where(e.Expr.Pos, "%s: %q must give a mapping, not %s", field, e.Expr.Value, describe(v))
		}
		for k, x := range m {
			out[k] = expr.Literal(expr.ToString(x))
		}
		return nil
	}
	for _, v := range e.Vars {
		s, err := t.partial(v.Value, where, field+"."+v.Name)
		if err != nil {
			return err
		}
		out[v.Name] = s
	}
	return nil
}

// onHostTemplate is onHost for every expression of a template.
func onHostTemplate(s string) (bool, error) {
	if err := expr.CheckTemplate(s); err != nil {
		return false, err
	}
	segs, err := expr.SplitTemplate(s)
	if err != nil {
		return false, err
	}
	for _, seg := range segs {
		if !seg.IsExpression() {
			continue
		}
		ok, err := onHost(seg.Expression)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// outputs partially evaluates the job's outputs.
func (t *translator) outputs() (map[string]string, error) {
	if len(t.j.Outputs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(t.j.Outputs))
	for _, o := range t.j.Outputs {
		s, err := t.partial(o.Value, t.errorf, "outputs."+o.Name)
		if err != nil {
			return nil, err
		}
		out[o.Name] = s
	}
	return out, nil
}

// hostOnly evaluates a value that must be known on the host (a timeout, a
// continue-on-error).
func (t *translator) hostOnly(v Text, field string, where func(Pos, string, ...any) error) (any, error) {
	hostable, err := onHostTemplate(v.Value)
	if err != nil {
		return nil, where(v.Pos, "%s: %v", field, err)
	}
	if !hostable {
		return nil, where(v.Pos, "%s: %q uses contexts known only while the job runs; Solstice CI needs this value when it makes the job (github, vars, matrix, strategy, needs and inputs are known then)", field, v.Value)
	}
	out, err := expr.EvaluateTemplate(v.Value, t.host)
	if err != nil {
		return nil, where(v.Pos, "%s: %v", field, err)
	}
	return out, nil
}

func (t *translator) minutes(v Text, field string) (float64, error) {
	return t.minutesAt(v, field, t.errorf)
}

func (t *translator) minutesAt(v Text, field string, where func(Pos, string, ...any) error) (float64, error) {
	x, err := t.hostOnly(v, field, where)
	if err != nil {
		return 0, err
	}
	n, ok := toNumber(x)
	if !ok || n <= 0 {
		return 0, where(v.Pos, "%s must be a number of minutes above 0, not %q", field, expr.ToString(x))
	}
	return n, nil
}

func (t *translator) boolean(v Text, field string) (bool, error) {
	return t.booleanAt(v, field, t.errorf)
}

func (t *translator) booleanAt(v Text, field string, where func(Pos, string, ...any) error) (bool, error) {
	x, err := t.hostOnly(v, field, where)
	if err != nil {
		return false, err
	}
	b, ok := toBool(x)
	if !ok {
		return false, where(v.Pos, "%s must be true or false, not %q", field, expr.ToString(x))
	}
	return b, nil
}

// toBool accepts booleans and the strings true and false.
func toBool(v any) (bool, bool) {
	switch x := v.(type) {
	case bool:
		return x, true
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "true":
			return true, true
		case "false":
			return false, true
		}
	}
	return false, false
}

// toNumber accepts numbers and strings holding a number.
func toNumber(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}
