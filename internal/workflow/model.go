package workflow

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/rhysd/actionlint"
	"go.yaml.in/yaml/v4"
)

// Pos is a 1-based position in the workflow file.
type Pos struct {
	Line int `json:"line"`
	Col  int `json:"col"`
}

func posOf(p *actionlint.Pos) Pos {
	if p == nil {
		return Pos{}
	}
	return Pos{Line: p.Line, Col: p.Col}
}

func (p Pos) less(q Pos) bool {
	return p.Line < q.Line || p.Line == q.Line && p.Col < q.Col
}

// Text is a value of the workflow file that may hold ${{ }} expressions,
// with its position. The zero Text means the key is absent.
type Text struct {
	Value string
	Pos   Pos
}

// IsSet reports whether the key was given.
func (t Text) IsSet() bool { return t.Pos.Line > 0 }

func textOf(s *actionlint.String) Text {
	if s == nil {
		return Text{}
	}
	return Text{Value: s.Value, Pos: posOf(s.Pos)}
}

// Var is one name/value pair (env, outputs, with) in file order.
type Var struct {
	Name  string
	Value Text
}

// Env is an env section: either variables, or one expression that yields
// an object.
type Env struct {
	Vars []Var
	Expr Text
}

// RunDefaults are the defaults.run settings.
type RunDefaults struct {
	Shell            Text
	WorkingDirectory Text
}

// Workflow is one parsed workflow file.
type Workflow struct {
	// File is the file name given to Parse; errors start with it.
	File string
	// Name is the workflow's name (empty when not given).
	Name     string
	Env      Env
	Defaults RunDefaults
	// Jobs in the order of the file.
	Jobs []*Job
}

// Job is one job of a workflow.
type Job struct {
	ID   string
	Pos  Pos
	Name Text
	// RunsOn holds the runs-on labels (each may be an expression);
	// RunsOnExpr is set instead when runs-on (or its labels) is one
	// expression; RunsOnGroup is the runner group of the group/labels form.
	RunsOn      []Text
	RunsOnExpr  Text
	RunsOnGroup Text
	Needs       []Text
	If          Text
	Env         Env
	Outputs     []Var
	Defaults    RunDefaults
	Strategy    *Strategy
	// TimeoutMinutes and ContinueOnError hold a literal or an expression.
	TimeoutMinutes  Text
	ContinueOnError Text
	Steps           []*Step

	file string // the workflow file, for errors

	// Keys the translator refuses, kept to name them in its errors.
	container  Pos
	services   Pos
	usesCall   Text // jobs.<id>.uses: a reusable workflow
	snapshot   Pos
	matrixNode *yaml.Node
	// matrixKeys are the matrix keys in the order they appear (rows, then
	// keys first added by include), for display names.
	matrixKeys []string
}

// Strategy is jobs.<id>.strategy.
type Strategy struct {
	Pos         Pos
	HasMatrix   bool
	FailFast    Text
	MaxParallel Text
}

// Step is one step of a job.
type Step struct {
	// Index is the step's 0-based position in the job.
	Index int
	Pos   Pos
	ID    Text
	Name  Text
	If    Text
	// Run is set for run steps; Uses for action steps.
	Run              Text
	Shell            Text
	WorkingDirectory Text
	Uses             Text
	With             []Var
	Env              Env
	TimeoutMinutes   Text
	ContinueOnError  Text
}

// describe names the step for messages: step 3 ("Build", id build).
func (s *Step) describe() string {
	var parts []string
	if s.Name.Value != "" {
		parts = append(parts, strconv.Quote(s.Name.Value))
	}
	if s.ID.Value != "" {
		parts = append(parts, "id "+s.ID.Value)
	}
	if len(parts) == 0 {
		return fmt.Sprintf("step %d", s.Index+1)
	}
	return fmt.Sprintf("step %d (%s)", s.Index+1, strings.Join(parts, ", "))
}

// Job returns the job with the given ID (case-insensitive), or nil.
func (w *Workflow) Job(id string) *Job {
	for _, j := range w.Jobs {
		if strings.EqualFold(j.ID, id) {
			return j
		}
	}
	return nil
}

// Parse parses a workflow file. filename is used in error messages only.
// Syntax errors and workflow schema errors come back as an ErrorList with
// file:line:col for each problem.
func Parse(filename string, src []byte) (*Workflow, error) {
	var doc yaml.Node
	yamlErr := yaml.Unmarshal(src, &doc)
	if yamlErr == nil {
		src = unquoteLiterals(src, &doc)
	}
	aw, errs := actionlint.Parse(src)
	if len(errs) > 0 {
		list := make(ErrorList, 0, len(errs))
		for _, e := range errs {
			list = append(list, &Error{File: filename, Pos: Pos{Line: max(e.Line, 1), Col: max(e.Column, 1)}, Msg: e.Message})
		}
		list.sort()
		return nil, list
	}
	if aw == nil {
		return nil, &Error{File: filename, Msg: "empty workflow"}
	}
	if yamlErr != nil {
		return nil, &Error{File: filename, Msg: fmt.Sprintf("parsing YAML: %v", yamlErr)}
	}
	w := &Workflow{
		File:     filename,
		Name:     textOf(aw.Name).Value,
		Env:      envOf(aw.Env),
		Defaults: defaultsOf(aw.Defaults),
	}
	jobsNode := mappingValue(documentRoot(&doc), "jobs")
	for _, aj := range aw.Jobs {
		j, err := jobOf(filename, aj, mappingValue(jobsNode, aj.ID.Value))
		if err != nil {
			return nil, err
		}
		w.Jobs = append(w.Jobs, j)
	}
	slices.SortFunc(w.Jobs, func(a, b *Job) int {
		if a.Pos.less(b.Pos) {
			return -1
		}
		if b.Pos.less(a.Pos) {
			return 1
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if len(w.Jobs) == 0 {
		return nil, &Error{File: filename, Msg: "the workflow has no jobs"}
	}
	return w, nil
}

func envOf(e *actionlint.Env) Env {
	if e == nil {
		return Env{}
	}
	if e.Expression != nil {
		return Env{Expr: textOf(e.Expression)}
	}
	out := Env{}
	for _, v := range e.Vars {
		out.Vars = append(out.Vars, Var{Name: v.Name.Value, Value: textOf(v.Value)})
	}
	sortVars(out.Vars, func(v Var) Pos { return v.Value.Pos })
	return out
}

func sortVars(vs []Var, pos func(Var) Pos) {
	slices.SortFunc(vs, func(a, b Var) int {
		if pos(a).less(pos(b)) {
			return -1
		}
		if pos(b).less(pos(a)) {
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

func defaultsOf(d *actionlint.Defaults) RunDefaults {
	if d == nil || d.Run == nil {
		return RunDefaults{}
	}
	return RunDefaults{Shell: textOf(d.Run.Shell), WorkingDirectory: textOf(d.Run.WorkingDirectory)}
}

func floatText(f *actionlint.Float) Text {
	if f == nil {
		return Text{}
	}
	if f.Expression != nil {
		return textOf(f.Expression)
	}
	return Text{Value: strconv.FormatFloat(f.Value, 'f', -1, 64), Pos: posOf(f.Pos)}
}

func intText(i *actionlint.Int) Text {
	if i == nil {
		return Text{}
	}
	if i.Expression != nil {
		return textOf(i.Expression)
	}
	return Text{Value: strconv.Itoa(i.Value), Pos: posOf(i.Pos)}
}

func boolText(b *actionlint.Bool) Text {
	if b == nil {
		return Text{}
	}
	if b.Expression != nil {
		return textOf(b.Expression)
	}
	return Text{Value: strconv.FormatBool(b.Value), Pos: posOf(b.Pos)}
}

func jobOf(file string, aj *actionlint.Job, node *yaml.Node) (*Job, error) {
	j := &Job{
		file:            file,
		ID:              aj.ID.Value,
		Pos:             posOf(aj.Pos),
		Name:            textOf(aj.Name),
		If:              textOf(aj.If),
		Env:             envOf(aj.Env),
		Defaults:        defaultsOf(aj.Defaults),
		TimeoutMinutes:  floatText(aj.TimeoutMinutes),
		ContinueOnError: boolText(aj.ContinueOnError),
	}
	for _, n := range aj.Needs {
		j.Needs = append(j.Needs, textOf(n))
	}
	if r := aj.RunsOn; r != nil {
		for _, l := range r.Labels {
			j.RunsOn = append(j.RunsOn, textOf(l))
		}
		j.RunsOnExpr = textOf(r.LabelsExpr)
		j.RunsOnGroup = textOf(r.Group)
	}
	for _, o := range aj.Outputs {
		j.Outputs = append(j.Outputs, Var{Name: o.Name.Value, Value: textOf(o.Value)})
	}
	sortVars(j.Outputs, func(v Var) Pos { return v.Value.Pos })
	if s := aj.Strategy; s != nil {
		j.Strategy = &Strategy{
			Pos:         posOf(s.Pos),
			HasMatrix:   s.Matrix != nil,
			FailFast:    boolText(s.FailFast),
			MaxParallel: intText(s.MaxParallel),
		}
		if s.Matrix != nil {
			m := mappingValue(mappingValue(node, "strategy"), "matrix")
			if m == nil {
				return nil, &Error{File: file, Pos: posOf(s.Matrix.Pos), Msg: fmt.Sprintf("job %q: cannot find strategy.matrix in the YAML", j.ID)}
			}
			j.matrixNode = m
			j.matrixKeys = matrixKeyOrder(m)
		}
	}
	if aj.Container != nil {
		j.container = posOf(aj.Container.Pos)
	}
	if aj.Services != nil {
		j.services = posOf(aj.Services.Pos)
	}
	if aj.WorkflowCall != nil && aj.WorkflowCall.Uses != nil {
		j.usesCall = textOf(aj.WorkflowCall.Uses)
	}
	if aj.Snapshot != nil {
		j.snapshot = j.Pos
		if aj.Snapshot.ImageName != nil {
			j.snapshot = posOf(aj.Snapshot.ImageName.Pos)
		}
	}
	for i, as := range aj.Steps {
		j.Steps = append(j.Steps, stepOf(i, as))
	}
	return j, nil
}

func stepOf(i int, as *actionlint.Step) *Step {
	s := &Step{
		Index:           i,
		Pos:             posOf(as.Pos),
		ID:              textOf(as.ID),
		Name:            textOf(as.Name),
		If:              textOf(as.If),
		Env:             envOf(as.Env),
		TimeoutMinutes:  floatText(as.TimeoutMinutes),
		ContinueOnError: boolText(as.ContinueOnError),
	}
	switch e := as.Exec.(type) {
	case *actionlint.ExecRun:
		s.Run = textOf(e.Run)
		s.Shell = textOf(e.Shell)
		s.WorkingDirectory = textOf(e.WorkingDirectory)
		if !s.Run.IsSet() {
			s.Run.Pos = posOf(e.RunPos)
		}
	case *actionlint.ExecAction:
		s.Uses = textOf(e.Uses)
		for _, in := range e.Inputs {
			s.With = append(s.With, Var{Name: in.Name.Value, Value: textOf(in.Value)})
		}
		sortVars(s.With, func(v Var) Pos { return v.Value.Pos })
		if e.Entrypoint != nil {
			s.With = append(s.With, Var{Name: "entrypoint", Value: textOf(e.Entrypoint)})
		}
		if e.Args != nil {
			s.With = append(s.With, Var{Name: "args", Value: textOf(e.Args)})
		}
	}
	return s
}

// unquoteLiterals makes Forgejo payloads parse: Forgejo's job parser
// writes timeout-minutes, strategy.fail-fast and strategy.max-parallel as
// quoted strings ("30", "false"), which the workflow schema rejects. A
// quoted literal of those keys is replaced by the same literal unquoted,
// padded with spaces so every position in the file stays the same.
func unquoteLiterals(src []byte, doc *yaml.Node) []byte {
	var fix []*yaml.Node
	literal := func(n *yaml.Node) {
		if n == nil || n.Kind != yaml.ScalarNode || n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
			return
		}
		v := n.Value
		if v == "true" || v == "false" {
			fix = append(fix, n)
			return
		}
		if _, err := strconv.ParseFloat(v, 64); err == nil && v != "" && strings.Trim(v, "0123456789.") == "" {
			fix = append(fix, n)
		}
	}
	jobs := resolve(mappingValue(documentRoot(doc), "jobs"))
	if jobs == nil || jobs.Kind != yaml.MappingNode {
		return src
	}
	for i := 1; i < len(jobs.Content); i += 2 {
		j := resolve(jobs.Content[i])
		literal(mappingValue(j, "timeout-minutes"))
		literal(mappingValue(j, "continue-on-error"))
		st := mappingValue(j, "strategy")
		literal(mappingValue(st, "fail-fast"))
		literal(mappingValue(st, "max-parallel"))
		if steps := mappingValue(j, "steps"); steps != nil && steps.Kind == yaml.SequenceNode {
			for _, s := range steps.Content {
				literal(mappingValue(resolve(s), "timeout-minutes"))
				literal(mappingValue(resolve(s), "continue-on-error"))
			}
		}
	}
	if len(fix) == 0 {
		return src
	}
	out := slices.Clone(src)
	lines := lineStarts(out)
	for _, n := range fix {
		if n.Line < 1 || n.Line > len(lines) {
			continue
		}
		off := lines[n.Line-1]
		for c := 1; c < n.Column && off < len(out); c++ {
			_, size := utf8.DecodeRune(out[off:])
			off += size
		}
		quote := byte('"')
		if n.Style&yaml.SingleQuotedStyle != 0 {
			quote = '\''
		}
		quoted := string(quote) + n.Value + string(quote)
		if !bytes.HasPrefix(out[off:], []byte(quoted)) {
			continue
		}
		copy(out[off:], n.Value+"  ")
	}
	return out
}

// lineStarts returns the byte offset of each line of src.
func lineStarts(src []byte) []int {
	starts := []int{0}
	for i, b := range src {
		if b == '\n' {
			starts = append(starts, i+1)
		}
	}
	return starts
}

// documentRoot returns the top mapping of a YAML document node.
func documentRoot(n *yaml.Node) *yaml.Node {
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		return resolve(n.Content[0])
	}
	return resolve(n)
}

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// mappingValue returns the value of key in a mapping node (exact match
// first, then case-insensitive), or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var folded *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := resolve(n.Content[i])
		if k == nil {
			continue
		}
		if k.Value == key {
			return resolve(n.Content[i+1])
		}
		if folded == nil && strings.EqualFold(k.Value, key) {
			folded = resolve(n.Content[i+1])
		}
	}
	return folded
}

// Error is one problem in a workflow file, at a position.
type Error struct {
	File string
	Pos  Pos
	Msg  string
	// Err is the error the problem was found from (an *expr.Error, say).
	Err error
}

func (e *Error) Error() string {
	if e.Pos.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Pos.Line, e.Pos.Col, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrorList is several problems of one file, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap gives errors.Is and errors.As access to each problem.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

func (l ErrorList) sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		if a.Pos.less(b.Pos) {
			return -1
		}
		if b.Pos.less(a.Pos) {
			return 1
		}
		return 0
	})
}

// errorAt makes an Error. The first error among args becomes its Err.
func errorAt(file string, pos Pos, format string, args ...any) *Error {
	e := &Error{File: file, Pos: pos, Msg: fmt.Sprintf(format, args...)}
	for _, a := range args {
		if err, ok := a.(error); ok {
			e.Err = err
			break
		}
	}
	return e
}
