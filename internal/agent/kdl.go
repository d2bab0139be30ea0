package agent

import (
	"bytes"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	kdl "github.com/sblinch/kdl-go"
	"github.com/sblinch/kdl-go/document"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// KDLWorkflow is a parsed .solstice/workflow.kdl: a superset of a plain
// list of steps with setup scripts and per-OS variants. See
// docs/workflow-kdl.md for the format.
type KDLWorkflow struct {
	Name     string
	Env      map[string]string
	Setup    []agentapi.Step
	Steps    []agentapi.Step
	Variants []KDLVariant
}

// KDLVariant is an `os "illumos" { … }` block: it applies when the guest's
// OS is one of OS.
type KDLVariant struct {
	OS    []string
	Env   map[string]string
	Setup []agentapi.Step
	Steps []agentapi.Step
}

// KDLError is an error in a workflow.kdl, naming the node at fault.
type KDLError struct {
	File string
	Path string // node path, as workflow > step "build" > timeout-minutes
	Msg  string
}

func (e *KDLError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Path, e.Msg)
}

// maxKDL bounds the size of a workflow.kdl.
const maxKDL = 1 << 20

// ParseKDL parses a workflow.kdl. file names it in errors.
func ParseKDL(file string, data []byte) (*KDLWorkflow, error) {
	if len(data) > maxKDL {
		return nil, &KDLError{File: file, Msg: fmt.Sprintf("larger than %d bytes", maxKDL)}
	}
	doc, err := parseKDLDoc(data)
	if err != nil {
		return nil, &KDLError{File: file, Msg: "not valid KDL: " + err.Error()}
	}
	p := kdlParser{file: file}
	nodes := doc.Nodes
	w := &KDLWorkflow{Env: map[string]string{}}
	path := ""
	if len(nodes) == 1 && nodeName(nodes[0]) == "workflow" {
		path = "workflow"
		if len(nodes[0].Arguments) > 0 {
			if w.Name, err = p.str(path, nodes[0].Arguments[0]); err != nil {
				return nil, err
			}
		}
		nodes = nodes[0].Children
	}
	for _, n := range nodes {
		np := joinPath(path, n)
		switch nodeName(n) {
		case "name":
			if w.Name, err = p.onlyArg(np, n); err != nil {
				return nil, err
			}
		case "env":
			if err := p.env(np, n, w.Env); err != nil {
				return nil, err
			}
		case "setup":
			s, err := p.setup(np, n)
			if err != nil {
				return nil, err
			}
			w.Setup = append(w.Setup, s)
		case "step":
			s, err := p.step(np, n)
			if err != nil {
				return nil, err
			}
			w.Steps = append(w.Steps, s)
		case "os":
			v, err := p.variant(np, n)
			if err != nil {
				return nil, err
			}
			w.Variants = append(w.Variants, v)
		default:
			return nil, p.errf(np, "unknown node %q (known: name, env, setup, step, os)", nodeName(n))
		}
	}
	return w, nil
}

// parseKDLDoc parses data, turning a panic of the parser into an error.
func parseKDLDoc(data []byte) (doc *document.Document, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("parser failed: %v", r)
		}
	}()
	return kdl.Parse(bytes.NewReader(data))
}

// For returns the steps for a guest running goos: setup scripts first (the
// common ones, then the variant's), then the steps, where a variant's step
// replaces the common step of the same name and adds the others at the end.
// Job env merges the same way.
func (w *KDLWorkflow) For(goos string) (steps []agentapi.Step, env map[string]string) {
	env = map[string]string{}
	for k, v := range w.Env {
		env[k] = v
	}
	setup := append([]agentapi.Step{}, w.Setup...)
	main := append([]agentapi.Step{}, w.Steps...)
	for _, v := range w.Variants {
		if !matchOS(v.OS, goos) {
			continue
		}
		for k, val := range v.Env {
			env[k] = val
		}
		setup = append(setup, v.Setup...)
		for _, s := range v.Steps {
			replaced := false
			for i := range main {
				if main[i].Name == s.Name {
					main[i] = s
					replaced = true
					break
				}
			}
			if !replaced {
				main = append(main, s)
			}
		}
	}
	return append(setup, main...), env
}

// matchOS reports whether goos is one of names. "solaris" and "sunos" match
// illumos too, "unix" matches every OS the agent runs on.
func matchOS(names []string, goos string) bool {
	for _, n := range names {
		n = strings.ToLower(n)
		switch {
		case n == goos, n == "unix":
			return true
		case (n == "solaris" || n == "sunos") && goos == "illumos":
			return true
		}
	}
	return false
}

type kdlParser struct{ file string }

func (p *kdlParser) errf(path, format string, args ...any) error {
	return &KDLError{File: p.file, Path: path, Msg: fmt.Sprintf(format, args...)}
}

func nodeName(n *document.Node) string {
	if n.Name == nil {
		return ""
	}
	if s, ok := n.Name.Value.(string); ok {
		return s
	}
	return fmt.Sprint(n.Name.Value)
}

func joinPath(parent string, n *document.Node) string {
	name := nodeName(n)
	if len(n.Arguments) > 0 {
		if s, ok := n.Arguments[0].Value.(string); ok {
			name += " " + strconv.Quote(s)
		}
	}
	if parent == "" {
		return name
	}
	return parent + " > " + name
}

// str reads a string value.
func (p *kdlParser) str(path string, v *document.Value) (string, error) {
	switch x := v.Value.(type) {
	case string:
		return x, nil
	default:
		return "", p.errf(path, "must be a string, not %v", v.Value)
	}
}

// scalar reads a string, number or boolean value as text (env values).
func (p *kdlParser) scalar(path string, v *document.Value) (string, error) {
	switch x := v.Value.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case *big.Int:
		return x.String(), nil
	case *big.Float:
		return x.String(), nil
	case nil:
		return "", nil
	default:
		return fmt.Sprint(x), nil
	}
}

func (p *kdlParser) number(path string, v *document.Value) (float64, error) {
	switch x := v.Value.(type) {
	case int64:
		return float64(x), nil
	case float64:
		return x, nil
	case string:
		f, err := strconv.ParseFloat(x, 64)
		if err == nil {
			return f, nil
		}
	}
	return 0, p.errf(path, "must be a number, not %v", v.Value)
}

func (p *kdlParser) boolean(path string, v *document.Value) (bool, error) {
	switch x := v.Value.(type) {
	case bool:
		return x, nil
	case string:
		if b, err := strconv.ParseBool(x); err == nil {
			return b, nil
		}
	}
	return false, p.errf(path, "must be true or false, not %v", v.Value)
}

func (p *kdlParser) onlyArg(path string, n *document.Node) (string, error) {
	if len(n.Arguments) != 1 || n.Properties.Len() > 0 || len(n.Children) > 0 {
		return "", p.errf(path, "takes exactly one value")
	}
	return p.str(path, n.Arguments[0])
}

// env reads `env KEY="value" …` (properties) and `env { KEY "value" }`.
func (p *kdlParser) env(path string, n *document.Node, into map[string]string) error {
	if len(n.Arguments) > 0 {
		return p.errf(path, "takes KEY=\"value\" properties or a block of KEY \"value\" lines")
	}
	for k, v := range n.Properties.Unordered() {
		s, err := p.scalar(path+" > "+k, v)
		if err != nil {
			return err
		}
		into[k] = s
	}
	for _, c := range n.Children {
		s, err := p.onlyArgScalar(joinPath(path, c), c)
		if err != nil {
			return err
		}
		into[nodeName(c)] = s
	}
	return nil
}

func (p *kdlParser) onlyArgScalar(path string, n *document.Node) (string, error) {
	if len(n.Arguments) != 1 || n.Properties.Len() > 0 || len(n.Children) > 0 {
		return "", p.errf(path, "takes exactly one value")
	}
	return p.scalar(path, n.Arguments[0])
}

// setup reads `setup "script"` or `setup "name" { run "…" … }`.
func (p *kdlParser) setup(path string, n *document.Node) (agentapi.Step, error) {
	if len(n.Children) == 0 && n.Properties.Len() == 0 && len(n.Arguments) == 1 {
		run, err := p.str(path, n.Arguments[0])
		if err != nil {
			return agentapi.Step{}, err
		}
		if strings.TrimSpace(run) == "" {
			return agentapi.Step{}, p.errf(path, "has an empty script")
		}
		return agentapi.Step{Name: "Setup: " + firstLine(run), Run: run}, nil
	}
	s, err := p.step(path, n)
	if err == nil && !strings.HasPrefix(s.Name, "Setup") {
		s.Name = "Setup: " + s.Name
	}
	return s, err
}

// step reads `step "name" run="…"` or `step "name" { run "…"; shell "bash"; … }`.
func (p *kdlParser) step(path string, n *document.Node) (agentapi.Step, error) {
	var s agentapi.Step
	if len(n.Arguments) != 1 {
		return s, p.errf(path, "needs exactly one name, as in step \"build\" { run \"make\" }")
	}
	name, err := p.str(path, n.Arguments[0])
	if err != nil {
		return s, err
	}
	s.Name = name
	set := func(key string, v *document.Value, kp string) error {
		var err error
		switch key {
		case "run":
			s.Run, err = p.str(kp, v)
		case "shell":
			s.Shell, err = p.str(kp, v)
		case "id":
			s.ID, err = p.str(kp, v)
		case "if":
			s.If, err = p.str(kp, v)
		case "working-directory":
			s.WorkingDirectory, err = p.str(kp, v)
		case "timeout-minutes":
			s.TimeoutMinutes, err = p.number(kp, v)
			if err == nil && s.TimeoutMinutes < 0 {
				err = p.errf(kp, "must not be negative")
			}
		case "continue-on-error":
			s.ContinueOnError, err = p.boolean(kp, v)
		default:
			err = p.errf(kp, "unknown key %q (known: run, shell, id, if, env, working-directory, timeout-minutes, continue-on-error)", key)
		}
		return err
	}
	for k, v := range n.Properties.Unordered() {
		if err := set(k, v, path+" > "+k); err != nil {
			return s, err
		}
	}
	for _, c := range n.Children {
		cp := joinPath(path, c)
		if nodeName(c) == "env" {
			if s.Env == nil {
				s.Env = map[string]string{}
			}
			if err := p.env(cp, c, s.Env); err != nil {
				return s, err
			}
			continue
		}
		if len(c.Arguments) != 1 || c.Properties.Len() > 0 || len(c.Children) > 0 {
			return s, p.errf(cp, "takes exactly one value")
		}
		if err := set(nodeName(c), c.Arguments[0], cp); err != nil {
			return s, err
		}
	}
	if strings.TrimSpace(s.Run) == "" {
		return s, p.errf(path, "has no run script")
	}
	return s, nil
}

// variant reads `os "illumos" "solaris" { env …; setup …; step … }`.
func (p *kdlParser) variant(path string, n *document.Node) (KDLVariant, error) {
	v := KDLVariant{Env: map[string]string{}}
	if len(n.Arguments) == 0 {
		return v, p.errf(path, "names no OS, as in os \"illumos\" { … }")
	}
	for _, a := range n.Arguments {
		s, err := p.str(path, a)
		if err != nil {
			return v, err
		}
		v.OS = append(v.OS, strings.ToLower(s))
	}
	for _, c := range n.Children {
		cp := joinPath(path, c)
		switch nodeName(c) {
		case "env":
			if err := p.env(cp, c, v.Env); err != nil {
				return v, err
			}
		case "setup":
			s, err := p.setup(cp, c)
			if err != nil {
				return v, err
			}
			v.Setup = append(v.Setup, s)
		case "step":
			s, err := p.step(cp, c)
			if err != nil {
				return v, err
			}
			v.Steps = append(v.Steps, s)
		default:
			return v, p.errf(cp, "unknown node %q in an os block (known: env, setup, step)", nodeName(c))
		}
	}
	return v, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return s
}
