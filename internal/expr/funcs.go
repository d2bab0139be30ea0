package expr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/rhysd/actionlint"
)

// MaxStringLength bounds every string an expression makes (format, join,
// toJSON, interpolation), so nested calls cannot grow a value without limit.
const MaxStringLength = 10 << 20

// tooLong is the error for a string past MaxStringLength.
func tooLong(what string, n int) error {
	return fmt.Errorf("%s makes a string of %d bytes, more than the limit of %d", what, n, MaxStringLength)
}

// arity returns the argument count bounds of a function (lower case name),
// and ok=false for a function the language does not have.
func arity(name string) (lo, hi int, ok bool) {
	switch name {
	case "contains", "startswith", "endswith":
		return 2, 2, true
	case "format":
		return 1, 255, true
	case "join":
		return 1, 2, true
	case "tojson", "fromjson":
		return 1, 1, true
	case "hashfiles":
		return 1, 255, true
	case "success", "failure", "always", "cancelled":
		return 0, 0, true
	}
	return 0, 0, false
}

// checkCall returns why a call is invalid, or "".
func checkCall(name string, nargs int) string {
	lo, hi, ok := arity(name)
	switch {
	case !ok:
		return fmt.Sprintf("unknown function %s()", name)
	case name == "hashfiles":
		return "hashFiles() is not supported by Solstice CI: it needs the job's workspace, which expressions here cannot read"
	case nargs < lo || nargs > hi:
		if lo == hi {
			return fmt.Sprintf("%s() takes %d argument(s), got %d", name, lo, nargs)
		}
		return fmt.Sprintf("%s() takes %d to %d arguments, got %d", name, lo, hi, nargs)
	}
	return ""
}

// call evaluates a function call.
func (p *parsed) call(n *actionlint.FuncCallNode, c *Context) (any, error) {
	name := strings.ToLower(n.Callee)
	if msg := checkCall(name, len(n.Args)); msg != "" {
		return nil, p.errorAtNode(n, msg)
	}
	args := make([]any, len(n.Args))
	for i, a := range n.Args {
		v, err := p.evalNode(a, c)
		if err != nil {
			return nil, err
		}
		args[i] = v
	}
	switch name {
	case "success":
		return statusIs(c, StatusSuccess), nil
	case "failure":
		return statusIs(c, StatusFailure), nil
	case "cancelled":
		return statusIs(c, StatusCancelled), nil
	case "always":
		return true, nil
	case "contains":
		return contains(args[0], args[1]), nil
	case "startswith":
		return affix(args[0], args[1], strings.HasPrefix), nil
	case "endswith":
		return affix(args[0], args[1], strings.HasSuffix), nil
	case "join":
		s := join(args)
		if len(s) > MaxStringLength {
			return nil, p.errorAtNode(n, tooLong("join()", len(s)).Error())
		}
		return s, nil
	case "format":
		s, err := format(args)
		if err != nil {
			return nil, p.errorAtNode(n, err.Error())
		}
		return s, nil
	case "tojson":
		s, err := toJSON(args[0])
		if err != nil {
			return nil, p.errorAtNode(n, err.Error())
		}
		return s, nil
	case "fromjson":
		v, err := fromJSON(toString(args[0]))
		if err != nil {
			return nil, p.errorAtNode(n, err.Error())
		}
		return v, nil
	}
	return nil, p.errorAtNode(n, fmt.Sprintf("unknown function %s()", name))
}

func primitive(v any) bool {
	k := kindOf(v)
	return k != kindArray && k != kindObject
}

// contains: substring test for primitives (case-insensitive), element test
// (loose equality) for arrays.
func contains(search, item any) bool {
	if primitive(search) {
		if !primitive(item) {
			return false
		}
		return strings.Contains(foldUpper(toString(search)), foldUpper(toString(item)))
	}
	for _, e := range elems(search) {
		if equals(item, norm(e)) {
			return true
		}
	}
	return false
}

// affix implements startsWith and endsWith (case-insensitive, primitives
// only).
func affix(s, x any, test func(string, string) bool) bool {
	if !primitive(s) || !primitive(x) {
		return false
	}
	return test(foldUpper(toString(s)), foldUpper(toString(x)))
}

func join(args []any) string {
	if primitive(args[0]) {
		return toString(args[0])
	}
	items := elems(args[0])
	if items == nil && kindOf(args[0]) != kindArray {
		return ""
	}
	sep := ","
	if len(args) > 1 && primitive(args[1]) {
		sep = toString(args[1])
	}
	parts := make([]string, len(items))
	for i, e := range items {
		parts[i] = toString(norm(e))
	}
	return strings.Join(parts, sep)
}

// format replaces {N} with the N-th argument after the format string; {{
// and }} are literal braces. Anything else with a brace is an error.
func format(args []any) (string, error) {
	fs := toString(args[0])
	var b strings.Builder
	for i := 0; i < len(fs); {
		c := fs[i]
		switch c {
		case '{':
			if i+1 < len(fs) && fs[i+1] == '{' {
				b.WriteByte('{')
				i += 2
				continue
			}
			j := i + 1
			for j < len(fs) && fs[j] >= '0' && fs[j] <= '9' {
				j++
			}
			if j == i+1 || j >= len(fs) || fs[j] != '}' {
				return "", fmt.Errorf("format string %q is invalid at byte %d: expected {N}, {{ or }}", fs, i)
			}
			n, err := strconv.Atoi(fs[i+1 : j])
			if err != nil || n+1 >= len(args) {
				return "", fmt.Errorf("format string %q references argument {%s} but only %d argument(s) follow it", fs, fs[i+1:j], len(args)-1)
			}
			b.WriteString(toString(args[n+1]))
			if b.Len() > MaxStringLength {
				return "", tooLong("format()", b.Len())
			}
			i = j + 1
		case '}':
			if i+1 < len(fs) && fs[i+1] == '}' {
				b.WriteByte('}')
				i += 2
				continue
			}
			return "", fmt.Errorf("format string %q is invalid at byte %d: a single } must be written }}", fs, i)
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

// toJSON renders a value as pretty JSON with two-space indentation, as
// GitHub does. Object keys are sorted.
func toJSON(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(jsonable(v)); err != nil {
		return "", fmt.Errorf("converting to JSON: %w", err)
	}
	out := strings.TrimSuffix(buf.String(), "\n")
	if len(out) > MaxStringLength {
		return "", tooLong("toJSON()", len(out))
	}
	return out, nil
}

// jsonable turns a value into something encoding/json renders like GitHub:
// filtered arrays as arrays, other Go types normalized, NaN and infinities
// (which JSON cannot hold) as null.
func jsonable(v any) any {
	switch x := norm(v).(type) {
	case float64:
		if x != x || x > 1.7976931348623157e308 || x < -1.7976931348623157e308 {
			return nil
		}
		return x
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonable(e)
		}
		return out
	case filtered:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonable(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonable(e)
		}
		return out
	default:
		return x
	}
}

// fromJSON parses JSON into JSON-like values.
func fromJSON(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("fromJSON: empty input is not JSON")
		}
		return nil, fmt.Errorf("fromJSON: parsing %s: %w", abbrev(s), err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("fromJSON: parsing %s: unexpected data after the JSON value", abbrev(s))
	}
	return v, nil
}

// abbrev quotes s for an error message, shortened when long.
func abbrev(s string) string {
	const limit = 80
	if len(s) > limit {
		return strconv.Quote(s[:limit]) + "…"
	}
	return strconv.Quote(s)
}
