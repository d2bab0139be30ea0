package workflow

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v4"

	"github.com/solstice-ci/solstice/internal/expr"
)

// MaxMatrixCombinations is GitHub's limit of jobs one matrix may make.
const MaxMatrixCombinations = 256

// matrixContexts are the contexts a strategy.matrix may use.
func matrixContexts() []string { return []string{"github", "needs", "vars", "inputs"} }

// Matrix expands the job's strategy.matrix into its combinations, in
// GitHub's order: the cartesian product of the rows in the order they are
// written, minus the combinations an exclude entry matches (a partial
// match is enough), then each include entry merged into every combination
// whose original values it does not contradict (values it adds may be
// overwritten by later entries, original values never), or added as a new
// combination when it fits none.
//
// Expressions in the matrix (a row, include, exclude or the whole matrix
// as ${{ fromJSON(needs.setup.outputs.matrix) }}, or single values) are
// evaluated with c, which should hold github, needs, vars and inputs.
//
// A job without a matrix has one combination, the empty map. A Forgejo
// payload's matrix, already reduced to single-element arrays, yields its
// one combination.
func (j *Job) Matrix(c *expr.Context) ([]map[string]any, error) {
	if j.matrixNode == nil {
		return []map[string]any{{}}, nil
	}
	if c == nil {
		c = &expr.Context{}
	}
	m := &matrixEval{job: j, c: c}
	v, err := m.value(j.matrixNode)
	if err != nil {
		return nil, err
	}
	top, ok := asObject(v)
	if !ok {
		return nil, m.errorf(j.matrixNode, "strategy.matrix must be a mapping of rows, but is %s", describe(v))
	}
	return m.expand(top)
}

// object is a mapping with its key order.
type object struct {
	keys []string
	vals map[string]any
}

func asObject(v any) (*object, bool) {
	switch x := v.(type) {
	case *object:
		return x, true
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return &object{keys: keys, vals: x}, true
	}
	return nil, false
}

// plain turns objects back into maps, recursively.
func plain(v any) any {
	switch x := v.(type) {
	case *object:
		m := make(map[string]any, len(x.keys))
		for _, k := range x.keys {
			m[k] = plain(x.vals[k])
		}
		return m
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plain(e)
		}
		return out
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = plain(e)
		}
		return m
	}
	return v
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a sequence"
	case *object, map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

type matrixEval struct {
	job *Job
	c   *expr.Context
}

func (m *matrixEval) errorf(n *yaml.Node, format string, args ...any) error {
	pos := m.job.Pos
	if n != nil {
		pos = Pos{Line: n.Line, Col: n.Column}
	}
	return errorAt(m.job.file, pos, "job %q: "+format, append([]any{m.job.ID}, args...)...)
}

// value converts a YAML node to a value, evaluating expressions in
// strings. YAML types are kept: 1.20 is the number 1.2, '1.20' a string.
func (m *matrixEval) value(n *yaml.Node) (any, error) {
	n = resolve(n)
	if n == nil {
		return nil, nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		o := &object{vals: map[string]any{}}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := resolve(n.Content[i])
			if k == nil {
				continue
			}
			v, err := m.value(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			if _, dup := o.vals[k.Value]; !dup {
				o.keys = append(o.keys, k.Value)
			}
			o.vals[k.Value] = v
		}
		return o, nil
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			v, err := m.value(e)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.ScalarNode:
		return m.scalar(n)
	}
	return nil, m.errorf(n, "unexpected YAML node in strategy.matrix")
}

func (m *matrixEval) scalar(n *yaml.Node) (any, error) {
	switch n.ShortTag() {
	case "!!null":
		return nil, nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err == nil {
			return b, nil
		}
	case "!!int":
		var i int64
		if err := n.Decode(&i); err == nil {
			return float64(i), nil
		}
		var f float64
		if err := n.Decode(&f); err == nil {
			return f, nil
		}
	case "!!float":
		var f float64
		if err := n.Decode(&f); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return f, nil
		}
	}
	if !strings.Contains(n.Value, "${{") {
		return n.Value, nil
	}
	if err := checkContexts(n.Value, matrixContexts()); err != nil {
		return nil, m.errorf(n, "strategy.matrix: %v", err)
	}
	v, err := expr.EvaluateTemplate(n.Value, m.c)
	if err != nil {
		return nil, m.errorf(n, "strategy.matrix: %v", err)
	}
	return v, nil
}

// expand computes the combinations.
func (m *matrixEval) expand(top *object) ([]map[string]any, error) {
	type row struct {
		key    string
		values []any
	}
	var (
		rows             []row
		include, exclude []any
		n                = m.job.matrixNode
	)
	rowKeys := map[string]bool{}
	for _, k := range top.keys {
		v := top.vals[k]
		switch strings.ToLower(k) {
		case "include", "exclude":
			list, ok := v.([]any)
			if !ok && v != nil {
				return nil, m.errorf(n, "strategy.matrix.%s must be a sequence of mappings, but is %s", strings.ToLower(k), describe(v))
			}
			if strings.ToLower(k) == "include" {
				include = list
			} else {
				exclude = list
			}
		default:
			values, ok := v.([]any)
			if !ok {
				return nil, m.errorf(n, "strategy.matrix row %q must be a sequence of values, but is %s", k, describe(v))
			}
			if len(values) == 0 {
				return nil, m.errorf(n, "strategy.matrix row %q has no values", k)
			}
			rows = append(rows, row{key: k, values: values})
			rowKeys[strings.ToLower(k)] = true
		}
	}

	// The cartesian product, first row outermost.
	var combos []map[string]any
	if len(rows) > 0 {
		combos = []map[string]any{{}}
		for _, r := range rows {
			next := make([]map[string]any, 0, len(combos)*len(r.values))
			for _, c := range combos {
				for _, v := range r.values {
					nc := make(map[string]any, len(c)+1)
					for k, x := range c {
						nc[k] = x
					}
					nc[r.key] = plain(v)
					next = append(next, nc)
				}
			}
			combos = next
			if len(combos) > 100*MaxMatrixCombinations {
				return nil, m.errorf(n, "strategy.matrix makes more than %d combinations", MaxMatrixCombinations)
			}
		}
	}

	for i, e := range exclude {
		o, ok := asObject(e)
		if !ok {
			return nil, m.errorf(n, "strategy.matrix.exclude[%d] must be a mapping, but is %s", i, describe(e))
		}
		for _, k := range o.keys {
			if !rowKeys[strings.ToLower(k)] {
				return nil, m.errorf(n, "strategy.matrix.exclude[%d] names %q, which is not a row of the matrix", i, k)
			}
		}
		combos = slices.DeleteFunc(combos, func(c map[string]any) bool {
			for _, k := range o.keys {
				if !reflect.DeepEqual(lookup(c, k), plain(o.vals[k])) {
					return false
				}
			}
			return true
		})
	}

	original := len(combos)
	for i, e := range include {
		o, ok := asObject(e)
		if !ok {
			return nil, m.errorf(n, "strategy.matrix.include[%d] must be a mapping, but is %s", i, describe(e))
		}
		matched := false
		for _, c := range combos[:original] {
			fits := true
			for _, k := range o.keys {
				if rowKeys[strings.ToLower(k)] && !reflect.DeepEqual(lookup(c, k), plain(o.vals[k])) {
					fits = false
					break
				}
			}
			if !fits {
				continue
			}
			matched = true
			for _, k := range o.keys {
				if !rowKeys[strings.ToLower(k)] {
					set(c, k, plain(o.vals[k]))
				}
			}
		}
		if !matched {
			nc := make(map[string]any, len(o.keys))
			for _, k := range o.keys {
				nc[k] = plain(o.vals[k])
			}
			combos = append(combos, nc)
		}
	}

	if len(combos) == 0 {
		return nil, m.errorf(n, "strategy.matrix has no combinations (every one is excluded)")
	}
	if len(combos) > MaxMatrixCombinations {
		return nil, m.errorf(n, "strategy.matrix makes %d combinations, more than GitHub's limit of %d", len(combos), MaxMatrixCombinations)
	}
	return combos, nil
}

// lookup reads a key case-insensitively.
func lookup(c map[string]any, k string) any {
	if v, ok := c[k]; ok {
		return v
	}
	for ck, v := range c {
		if strings.EqualFold(ck, k) {
			return v
		}
	}
	return nil
}

// set writes a key, replacing a key that differs only in case.
func set(c map[string]any, k string, v any) {
	for ck := range c {
		if ck != k && strings.EqualFold(ck, k) {
			delete(c, ck)
		}
	}
	c[k] = v
}

// matrixKeyOrder lists the matrix keys in the order they appear: the rows,
// then keys that include entries add.
func matrixKeyOrder(n *yaml.Node) []string {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var keys []string
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[strings.ToLower(k)] {
			seen[strings.ToLower(k)] = true
			keys = append(keys, k)
		}
	}
	var include *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := resolve(n.Content[i])
		if k == nil {
			continue
		}
		switch strings.ToLower(k.Value) {
		case "include":
			include = resolve(n.Content[i+1])
		case "exclude":
		default:
			add(k.Value)
		}
	}
	if include != nil && include.Kind == yaml.SequenceNode {
		for _, e := range include.Content {
			e = resolve(e)
			if e == nil || e.Kind != yaml.MappingNode {
				continue
			}
			for i := 0; i+1 < len(e.Content); i += 2 {
				if k := resolve(e.Content[i]); k != nil {
					add(k.Value)
				}
			}
		}
	}
	return keys
}

// checkContexts returns an error when the template uses a context outside
// allowed or a status function.
func checkContexts(template string, allowed []string) error {
	ctxs, fns, err := expr.TemplateReferences(template)
	if err != nil {
		return err
	}
	if err := expr.CheckTemplate(template); err != nil {
		return err
	}
	for _, c := range ctxs {
		if !slices.Contains(allowed, c) {
			return fmt.Errorf("%q uses the %s context, but only %s are available here", template, c, strings.Join(allowed, ", "))
		}
	}
	for _, f := range fns {
		if isStatusFunction(f) {
			return fmt.Errorf("%q calls %s(), which is not available here", template, f)
		}
	}
	return nil
}

func isStatusFunction(f string) bool {
	switch f {
	case "success", "failure", "always", "cancelled":
		return true
	}
	return false
}
