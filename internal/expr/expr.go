// Package expr evaluates GitHub Actions expressions — the ${{ }} language of
// workflow files — with GitHub's semantics. The same engine serves the
// workflow translator on the host and the guest agent, so it imports only the
// standard library and actionlint's expression lexer and parser.
//
// Values are JSON-like: map[string]any, []any, string, float64, bool and nil.
// Context values of other common Go types (int, map[string]string,
// []string…) are accepted and converted as they are read.
//
// The entry points:
//
//   - Evaluate evaluates a bare expression (no ${{ }}).
//   - EvaluateCondition evaluates an `if:` condition: an optional ${{ }}
//     wrapper, and an implicit success() && (…) when the condition calls no
//     status function.
//   - Interpolate replaces every ${{ }} of a string with its value as text.
//   - EvaluateTemplate evaluates a workflow value that may be one whole
//     ${{ }} expression (keeping the value's type) or text with ${{ }} in it.
//   - References tells which contexts and functions an expression uses;
//     SplitTemplate cuts a string into its text and expression pieces.
//
// Semantics follow GitHub's documentation and its reference implementation:
// loose equality with coercion to numbers, case-insensitive string
// comparison, && and || returning one of their operands, object filters
// (a.*.b), missing properties reading as null, and the functions contains,
// startsWith, endsWith, format, join, toJSON, fromJSON, success, failure,
// always and cancelled. hashFiles is refused: it needs the workspace.
package expr

import (
	"fmt"
	"strings"

	"github.com/rhysd/actionlint"
)

// Job statuses a Context can carry, as the status functions see them.
const (
	StatusSuccess   = "success"
	StatusFailure   = "failure"
	StatusCancelled = "cancelled"
)

// Context holds the values of the contexts by name (github, env, vars,
// secrets, matrix, strategy, needs, inputs, runner, job, steps) as JSON-like
// values: map[string]any, []any, string, float64, bool, nil.
type Context struct {
	Values map[string]any
	// Status is the job status so far: "success" (the default when empty),
	// "failure" or "cancelled". The status functions read it. Any other
	// value (the translator uses "skipped" for a job whose needs were
	// skipped) makes success(), failure() and cancelled() all false.
	Status string
}

// IsKnownContext reports whether name (any case) is a context name the
// expression language knows. A name outside this list is an error in an
// expression; a known context missing from Context.Values reads as null.
func IsKnownContext(name string) bool {
	switch strings.ToLower(name) {
	case "github", "env", "vars", "secrets", "matrix", "strategy", "needs",
		"inputs", "runner", "job", "steps", "jobs":
		return true
	}
	return false
}

// Error is an error in an expression: a syntax error or an error while
// evaluating it. Line and Column are 1-based and count in the whole input
// given to the function (for Interpolate, the whole string).
type Error struct {
	// Expression is the expression's source, without ${{ }}.
	Expression string
	Line       int
	Column     int
	Message    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("expression %q at line %d, column %d: %s", e.Expression, e.Line, e.Column, e.Message)
}

// parsed is one parsed expression and where it sits in its input.
type parsed struct {
	src    string // the expression source, without ${{ }}
	node   actionlint.ExprNode
	input  string // the whole input, for positions
	offset int    // byte offset of src in input
}

// errorAt makes an Error for a byte offset relative to the expression.
func (p *parsed) errorAt(rel int, msg string) *Error {
	line, col := position(p.input, p.offset+rel)
	return &Error{Expression: p.src, Line: line, Column: col, Message: msg}
}

// errorAtNode makes an Error at a node of the expression.
func (p *parsed) errorAtNode(n actionlint.ExprNode, msg string) *Error {
	rel := 0
	if n != nil {
		if t := n.Token(); t != nil {
			rel = t.Offset
		}
	}
	return p.errorAt(rel, msg)
}

// position converts a byte offset in s to a 1-based line and column (in
// bytes of that line).
func position(s string, off int) (line, col int) {
	if off > len(s) {
		off = len(s)
	}
	if off < 0 {
		off = 0
	}
	line = 1 + strings.Count(s[:off], "\n")
	col = off - strings.LastIndexByte(s[:off], '\n')
	return line, col
}

// parseExpr parses the expression that starts at byte offset start of input
// and ends with "}}" (or, when bare is true, at the end of input). It
// returns the parsed expression and the offset just after its closing "}}"
// (for bare expressions, len(input)).
func parseExpr(input string, start int, bare bool) (*parsed, int, error) {
	var src, exprSrc string
	if bare {
		exprSrc = input[start:]
		src = exprSrc + "}}"
	} else {
		end := closing(input, start)
		if end < 0 {
			p := &parsed{src: strings.TrimSpace(input[start:]), input: input, offset: start}
			return nil, 0, p.errorAt(0, "the expression is not closed: ${{ without a matching }}")
		}
		src = input[start:end]
		exprSrc = src[:len(src)-2]
	}
	p := &parsed{src: strings.TrimSpace(exprSrc), input: input, offset: start}
	lex := actionlint.NewExprLexer(src)
	node, perr := actionlint.NewExprParser().Parse(lex)
	if perr != nil {
		return nil, 0, p.errorAt(min(perr.Offset, len(exprSrc)), perr.Message)
	}
	if lex.Offset() != len(src) {
		// Only a bare expression can hold a }} of its own outside strings.
		return nil, 0, p.errorAt(lex.Offset()-2, "unexpected }} in the middle of the expression")
	}
	p.node = node
	return p, start + len(src), nil
}

// closing returns the offset just after the "}}" that closes the expression
// starting at start (the first }} outside a string literal), or -1.
func closing(s string, start int) int {
	inString := false
	for i := start; i < len(s); i++ {
		switch {
		case s[i] == '\'':
			inString = !inString
		case !inString && s[i] == '}' && i+1 < len(s) && s[i+1] == '}':
			return i + 2
		}
	}
	return -1
}

// parseBare parses a bare expression.
func parseBare(expression string) (*parsed, error) {
	p, _, err := parseExpr(expression, 0, true)
	return p, err
}

// Evaluate evaluates a bare expression (no ${{ }}) and returns its value:
// nil, bool, float64, string, []any or map[string]any.
func Evaluate(expression string, c *Context) (any, error) {
	p, err := parseBare(expression)
	if err != nil {
		return nil, err
	}
	v, err := p.eval(c)
	if err != nil {
		return nil, err
	}
	return export(v), nil
}

// EvaluateCondition evaluates an `if:` condition. The condition may be
// wrapped in ${{ }}. When it calls none of the status functions (success,
// failure, always, cancelled), it means success() && (cond). An empty
// condition means success(). Text mixing ${{ }} with other text is
// interpolated and is true when the result is not empty, as on GitHub.
func EvaluateCondition(cond string, c *Context) (bool, error) {
	trimmed := strings.TrimSpace(cond)
	if trimmed == "" {
		return statusIs(c, StatusSuccess), nil
	}
	if !strings.HasPrefix(trimmed, "${{") {
		p, err := parseBare(trimmed)
		if err == nil {
			return p.condition(c)
		}
		if !strings.Contains(trimmed, "${{") {
			return false, err
		}
		// Text with ${{ }} inside it, handled below.
	}
	t, err := parseTemplate(trimmed)
	if err != nil {
		return false, err
	}
	if p := t.single(); p != nil {
		return p.condition(c)
	}
	hasStatus := false
	for _, part := range t.parts {
		if part.expr != nil && usesStatusFunction(part.expr.node) {
			hasStatus = true
		}
	}
	if !hasStatus && !statusIs(c, StatusSuccess) {
		return false, nil
	}
	s, err := t.interpolate(c)
	if err != nil {
		return false, err
	}
	return s != "", nil
}

// condition evaluates p with `if:` semantics.
func (p *parsed) condition(c *Context) (bool, error) {
	if !usesStatusFunction(p.node) && !statusIs(c, StatusSuccess) {
		return false, nil
	}
	v, err := p.eval(c)
	if err != nil {
		return false, err
	}
	return truthy(v), nil
}

// statusIs reports whether the context's status is s ("" counts as success).
func statusIs(c *Context, s string) bool {
	st := ""
	if c != nil {
		st = strings.ToLower(c.Status)
	}
	if st == "" {
		st = StatusSuccess
	}
	return st == s
}

// Interpolate replaces each ${{ expr }} of s with its value converted to a
// string by GitHub's rules (null is empty, numbers in their shortest form,
// arrays and objects as "Array" and "Object").
func Interpolate(s string, c *Context) (string, error) {
	if !strings.Contains(s, "${{") {
		return s, nil
	}
	t, err := parseTemplate(s)
	if err != nil {
		return "", err
	}
	return t.interpolate(c)
}

// EvaluateTemplate evaluates a workflow value. When s is exactly one
// ${{ expr }} (surrounding white space aside) the result is the
// expression's value with its type, as GitHub gives it to keys such as
// strategy.matrix, timeout-minutes or continue-on-error. Otherwise the
// result is the interpolated string.
func EvaluateTemplate(s string, c *Context) (any, error) {
	if !strings.Contains(s, "${{") {
		return s, nil
	}
	t, err := parseTemplate(s)
	if err != nil {
		return nil, err
	}
	if p := t.single(); p != nil {
		v, err := p.eval(c)
		if err != nil {
			return nil, err
		}
		return export(v), nil
	}
	return t.interpolate(c)
}
