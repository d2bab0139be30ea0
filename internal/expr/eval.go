package expr

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/rhysd/actionlint"
)

// eval evaluates the parsed expression.
func (p *parsed) eval(c *Context) (any, error) {
	if c == nil {
		c = &Context{}
	}
	return p.evalNode(p.node, c)
}

func (p *parsed) evalNode(n actionlint.ExprNode, c *Context) (any, error) {
	switch n := n.(type) {
	case *actionlint.NullNode:
		return nil, nil
	case *actionlint.BoolNode:
		return n.Value, nil
	case *actionlint.IntNode:
		return float64(n.Value), nil
	case *actionlint.FloatNode:
		return n.Value, nil
	case *actionlint.StringNode:
		return n.Value, nil
	case *actionlint.VariableNode:
		return p.variable(n, c)
	case *actionlint.ObjectDerefNode:
		recv, err := p.evalNode(n.Receiver, c)
		if err != nil {
			return nil, err
		}
		return access(recv, false, n.Property), nil
	case *actionlint.ArrayDerefNode:
		recv, err := p.evalNode(n.Receiver, c)
		if err != nil {
			return nil, err
		}
		return access(recv, true, nil), nil
	case *actionlint.IndexAccessNode:
		recv, err := p.evalNode(n.Operand, c)
		if err != nil {
			return nil, err
		}
		idx, err := p.evalNode(n.Index, c)
		if err != nil {
			return nil, err
		}
		return access(recv, false, idx), nil
	case *actionlint.NotOpNode:
		v, err := p.evalNode(n.Operand, c)
		if err != nil {
			return nil, err
		}
		return !truthy(v), nil
	case *actionlint.CompareOpNode:
		return p.compare(n, c)
	case *actionlint.LogicalOpNode:
		return p.logical(n, c)
	case *actionlint.FuncCallNode:
		return p.call(n, c)
	}
	return nil, p.errorAtNode(n, fmt.Sprintf("unsupported expression node %T", n))
}

// variable reads a context by name.
func (p *parsed) variable(n *actionlint.VariableNode, c *Context) (any, error) {
	if !IsKnownContext(n.Name) {
		return nil, p.errorAtNode(n, fmt.Sprintf("unknown context %q", n.Name))
	}
	if c.Values == nil {
		return nil, nil
	}
	v, _ := property(c.Values, n.Name)
	return v, nil
}

// access is property access, index access and the object filter (star).
func access(recv any, star bool, idx any) any {
	var (
		str      string
		hasStr   bool
		num      int
		hasNum   bool
		idxValid = !star
	)
	if idxValid {
		if k := kindOf(idx); k != kindArray && k != kindObject {
			str, hasStr = toString(idx), true
		}
		if f := toNumber(idx); !math.IsNaN(f) && !math.IsInf(f, 0) && f >= 0 && f < math.MaxInt32 {
			num, hasNum = int(math.Floor(f)), true
		}
	}
	switch r := recv.(type) {
	case filtered:
		out := filtered{}
		for _, item := range r {
			switch it := norm(item).(type) {
			case map[string]any:
				if star {
					for _, k := range sortedKeys(it) {
						out = append(out, norm(it[k]))
					}
				} else if hasStr {
					if v, ok := property(it, str); ok {
						out = append(out, v)
					}
				}
			case []any:
				if star {
					for _, e := range it {
						out = append(out, norm(e))
					}
				} else if hasNum && num < len(it) {
					out = append(out, norm(it[num]))
				}
			}
		}
		return out
	case []any:
		if star {
			out := make(filtered, len(r))
			for i, e := range r {
				out[i] = norm(e)
			}
			return out
		}
		if hasNum && num < len(r) {
			return norm(r[num])
		}
		return nil
	case map[string]any:
		if star {
			out := make(filtered, 0, len(r))
			for _, k := range sortedKeys(r) {
				out = append(out, norm(r[k]))
			}
			return out
		}
		if hasStr {
			v, _ := property(r, str)
			return v
		}
		return nil
	}
	if star {
		return filtered{}
	}
	return nil
}

func (p *parsed) compare(n *actionlint.CompareOpNode, c *Context) (any, error) {
	l, err := p.evalNode(n.Left, c)
	if err != nil {
		return nil, err
	}
	r, err := p.evalNode(n.Right, c)
	if err != nil {
		return nil, err
	}
	switch n.Kind {
	case actionlint.CompareOpNodeKindEq:
		return equals(l, r), nil
	case actionlint.CompareOpNodeKindNotEq:
		return !equals(l, r), nil
	case actionlint.CompareOpNodeKindLess:
		return less(l, r), nil
	case actionlint.CompareOpNodeKindLessEq:
		return equals(l, r) || less(l, r), nil
	case actionlint.CompareOpNodeKindGreater:
		return greater(l, r), nil
	case actionlint.CompareOpNodeKindGreaterEq:
		return equals(l, r) || greater(l, r), nil
	}
	return nil, p.errorAtNode(n, "unknown comparison operator")
}

// logical evaluates && and ||, which return one of their operands.
func (p *parsed) logical(n *actionlint.LogicalOpNode, c *Context) (any, error) {
	l, err := p.evalNode(n.Left, c)
	if err != nil {
		return nil, err
	}
	switch n.Kind {
	case actionlint.LogicalOpNodeKindAnd:
		if !truthy(l) {
			return l, nil
		}
	case actionlint.LogicalOpNodeKindOr:
		if truthy(l) {
			return l, nil
		}
	default:
		return nil, p.errorAtNode(n, "unknown logical operator")
	}
	return p.evalNode(n.Right, c)
}

// isStatusFunction reports whether name (lower case) is a status function.
func isStatusFunction(name string) bool {
	switch name {
	case "success", "failure", "always", "cancelled":
		return true
	}
	return false
}

// usesStatusFunction reports whether the expression calls a status
// function anywhere.
func usesStatusFunction(n actionlint.ExprNode) bool {
	found := false
	actionlint.VisitExprNode(n, func(node, _ actionlint.ExprNode, entering bool) {
		if f, ok := node.(*actionlint.FuncCallNode); ok && entering && isStatusFunction(strings.ToLower(f.Callee)) {
			found = true
		}
	})
	return found
}

// References returns which contexts and which functions an expression
// uses, lower case, sorted and without duplicates. It checks only the
// syntax.
func References(expression string) (contexts []string, functions []string, err error) {
	p, err := parseBare(expression)
	if err != nil {
		return nil, nil, err
	}
	ctx, fn := map[string]bool{}, map[string]bool{}
	p.references(ctx, fn)
	return setList(ctx), setList(fn), nil
}

// TemplateReferences is References over every ${{ }} expression of s.
func TemplateReferences(s string) (contexts []string, functions []string, err error) {
	t, err := parseTemplate(s)
	if err != nil {
		return nil, nil, err
	}
	ctx, fn := map[string]bool{}, map[string]bool{}
	for _, part := range t.parts {
		if part.expr != nil {
			part.expr.references(ctx, fn)
		}
	}
	return setList(ctx), setList(fn), nil
}

func (p *parsed) references(ctx, fn map[string]bool) {
	actionlint.VisitExprNode(p.node, func(node, _ actionlint.ExprNode, entering bool) {
		if !entering {
			return
		}
		switch n := node.(type) {
		case *actionlint.VariableNode:
			ctx[strings.ToLower(n.Name)] = true
		case *actionlint.FuncCallNode:
			fn[strings.ToLower(n.Callee)] = true
		}
	})
}

func setList(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Check checks an expression without evaluating it: its syntax, that every
// context it names exists, and that every function it calls exists and gets
// a valid number of arguments.
func Check(expression string) error {
	p, err := parseBare(expression)
	if err != nil {
		return err
	}
	return p.check()
}

// CheckTemplate is Check for every ${{ }} expression of s.
func CheckTemplate(s string) error {
	t, err := parseTemplate(s)
	if err != nil {
		return err
	}
	for _, part := range t.parts {
		if part.expr == nil {
			continue
		}
		if err := part.expr.check(); err != nil {
			return err
		}
	}
	return nil
}

func (p *parsed) check() error {
	var first error
	actionlint.VisitExprNode(p.node, func(node, _ actionlint.ExprNode, entering bool) {
		if !entering || first != nil {
			return
		}
		switch n := node.(type) {
		case *actionlint.VariableNode:
			if !IsKnownContext(n.Name) {
				first = p.errorAtNode(n, fmt.Sprintf("unknown context %q", n.Name))
			}
		case *actionlint.FuncCallNode:
			if msg := checkCall(strings.ToLower(n.Callee), len(n.Args)); msg != "" {
				first = p.errorAtNode(n, msg)
			}
		}
	})
	return first
}
