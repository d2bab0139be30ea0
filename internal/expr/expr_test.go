package expr

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
)

// testContext is a context shaped like the ones GitHub documents.
func testContext() *Context {
	var event map[string]any
	if err := json.Unmarshal([]byte(`{
		"issue": {"labels": [{"name": "bug"}, {"name": "help wanted"}]},
		"pull_request": {"number": 42, "draft": false},
		"commits": [{"id": "a1", "author": {"name": "Mona"}}, {"id": "b2", "author": {"name": "Hubot"}}]
	}`), &event); err != nil {
		panic(err)
	}
	return &Context{Values: map[string]any{
		"github": map[string]any{
			"event_name": "push",
			"ref":        "refs/heads/main",
			"repository": "octo-org/octo-repo",
			"event":      event,
			"run_number": float64(7),
		},
		"env": map[string]string{"GREETING": "Hello", "EMPTY": ""},
		"vars": map[string]any{
			"fruits": []any{
				map[string]any{"name": "apple", "quantity": float64(1)},
				map[string]any{"name": "orange", "quantity": float64(2)},
				map[string]any{"name": "pear", "quantity": float64(1)},
			},
			"Mixed": "case",
			"nested": map[string]any{
				"a": map[string]any{"x": []any{float64(1), float64(2)}},
				"b": map[string]any{"x": []any{float64(3)}},
			},
		},
		"matrix": map[string]any{"os": "ubuntu-latest", "go": "1.22", "n": float64(3)},
		"steps": map[string]any{
			"build": map[string]any{"outputs": map[string]any{"version": "1.2.3"}, "outcome": "success"},
		},
		"secrets": map[string]any{"TOKEN": "s3cr3t"},
	}}
}

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name string
		expr string
		want any
	}{
		// Literals (docs: "Literals").
		{"null", "null", nil},
		{"true", "true", true},
		{"false", "false", false},
		{"int", "711", float64(711)},
		{"negative float", "-9.2", -9.2},
		{"exponent", "-2.99e-2", -0.0299},
		{"hex", "0xff", float64(255)},
		{"string with quote", "'It''s open source!'", "It's open source!"},
		{"string keeps braces", "'}} {{'", "}} {{"},

		// Property access.
		{"dot", "github.event_name", "push"},
		{"context case-insensitive", "GitHub.Event_Name", "push"},
		{"property case-insensitive", "vars.mixed", "case"},
		{"index string", "github['event_name']", "push"},
		{"index string case-insensitive", "github['EVENT_NAME']", "push"},
		{"index array", "vars.fruits[1].name", "orange"},
		{"index array by string number", "vars.fruits['2'].name", "pear"},
		{"index array fraction floors", "vars.fruits[1.7].name", "orange"},
		{"index out of range", "vars.fruits[9]", nil},
		{"negative index", "vars.fruits[-1]", nil},
		{"missing property", "github.nope", nil},
		{"missing deep", "github.nope.deeper.still", nil},
		{"property of string", "github.ref.length", nil},
		{"absent known context", "inputs.x", nil},
		{"map[string]string context", "env.GREETING", "Hello"},
		{"number in context", "github.run_number", float64(7)},
		{"steps output", "steps.build.outputs.version", "1.2.3"},

		// Object filters (docs: "Object filters").
		{"filter", "vars.fruits.*.name", []any{"apple", "orange", "pear"}},
		{"filter labels", "github.event.issue.labels.*.name", []any{"bug", "help wanted"}},
		{"filter deep", "github.event.commits.*.author.name", []any{"Mona", "Hubot"}},
		{"filter over object", "vars.nested.*.x", []any{[]any{float64(1), float64(2)}, []any{float64(3)}}},
		{"filter flatten", "vars.nested.*.x.*", []any{float64(1), float64(2), float64(3)}},
		{"filter index", "vars.nested.*.x[0]", []any{float64(1), float64(3)}},
		{"filter missing property dropped", "vars.fruits.*.color", []any{}},
		{"filter on string", "github.ref.*", []any{}},
		{"filter on null", "github.nope.*.x", []any{}},

		// Operators.
		{"not", "!github.nope", true},
		{"not string", "!'x'", false},
		{"not zero", "!0", true},
		{"and returns right", "'a' && 'b'", "b"},
		{"and returns falsy left", "'' && 'b'", ""},
		{"or returns truthy left", "'a' || 'b'", "a"},
		{"or returns right", "null || 0", float64(0)},
		{"ternary idiom true", "github.event_name == 'push' && 'yes' || 'no'", "yes"},
		{"ternary idiom false", "github.event_name == 'pull_request' && 'yes' || 'no'", "no"},
		{"precedence and before or", "true || false && false", true},
		{"grouping", "(true || false) && false", false},
		{"not binds tighter", "!false == true", true},

		// Equality with coercion (docs: "Operators").
		{"string eq case-insensitive", "'ABC' == 'abc'", true},
		{"string ne", "'abc' != 'abd'", true},
		{"null eq 0", "null == 0", true},
		{"null eq false", "null == false", true},
		{"null eq null", "null == null", true},
		{"null eq empty string", "null == ''", true},
		{"true eq 1", "true == 1", true},
		{"true eq '1'", "true == '1'", true},
		{"false eq ''", "false == ''", true},
		{"number eq string", "1 == '1.0'", true},
		{"number eq padded string", "3 == ' 3 '", true},
		{"number eq hex string", "255 == '0xff'", true},
		{"number vs nonnumeric string", "1 == 'one'", false},
		{"NaN ne NaN", "'x' == fromJSON('\"x\"') && 0 == 'x'", false},
		{"array vs number", "vars.fruits == 0", false},
		{"array vs string", "vars.fruits == 'Array'", false},
		{"same object instance", "vars.nested == vars.nested", true},
		{"same array instance", "vars.fruits == vars.fruits", true},
		{"different objects", "vars.nested.a == vars.nested.b", false},
		{"filter never equal", "vars.fruits.*.name == vars.fruits.*.name", false},
		{"fromJSON objects differ", "fromJSON('{}') == fromJSON('{}')", false},

		// Ordering.
		{"lt numbers", "1 < 2", true},
		{"lt strings case-insensitive", "'a' < 'B'", true},
		{"gt strings", "'b' > 'A'", true},
		{"le equal strings", "'abc' <= 'ABC'", true},
		{"ge", "2 >= 2", true},
		{"lt NaN", "1 < 'x'", false},
		{"ge NaN", "1 >= 'x'", false},
		{"lt bool", "false < true", true},
		{"gt bool", "true > false", true},
		{"lt null number", "null < 1", true},
		{"lt array", "vars.fruits < 1", false},
		{"string vs number ordering", "'10' > 9", true},
		{"matrix number", "matrix.n > 2", true},

		// Functions (docs: "Functions").
		{"contains substring", "contains('Hello world', 'llo')", true},
		{"contains case-insensitive", "contains('Hello world', 'WORLD')", true},
		{"contains number", "contains(12345, 34)", true},
		{"contains array", "contains(github.event.issue.labels.*.name, 'bug')", true},
		{"contains array case-insensitive", "contains(github.event.issue.labels.*.name, 'BUG')", true},
		{"contains array miss", "contains(github.event.issue.labels.*.name, 'bu')", false},
		{"contains fromJSON array", "contains(fromJSON('[\"push\", \"pull_request\"]'), github.event_name)", true},
		{"contains array loose eq", "contains(fromJSON('[1, 2]'), '2')", true},
		{"contains object", "contains(vars.nested, 'a')", false},
		{"contains primitive in array item", "contains('abc', vars.fruits)", false},
		{"startsWith", "startsWith('Hello world', 'He')", true},
		{"startsWith case-insensitive", "startsWith('Hello world', 'hE')", true},
		{"startsWith miss", "startsWith('Hello world', 'world')", false},
		{"startsWith ref", "startsWith(github.ref, 'refs/heads/')", true},
		{"startsWith array", "startsWith(vars.fruits, 'A')", false},
		{"endsWith", "endsWith('Hello world', 'LD')", true},
		{"endsWith miss", "endsWith('Hello world', 'He')", false},
		{"format", "format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')", "Hello Mona the Octocat"},
		{"format escapes", "format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')", "{Hello Mona the Octocat!}"},
		{"format repeat and order", "format('{1}-{0}-{1}', 'a', 'b')", "b-a-b"},
		{"format values", "format('{0}|{1}|{2}|{3}', null, true, 1.5, vars.fruits)", "|true|1.5|Array"},
		{"format no args", "format('plain')", "plain"},
		{"join filter", "join(github.event.issue.labels.*.name, ', ')", "bug, help wanted"},
		{"join default sep", "join(fromJSON('[1, \"a\", true, null]'))", "1,a,true,"},
		{"join string", "join('abc', ',')", "abc"},
		{"join object", "join(vars.nested)", ""},
		{"toJSON string", "toJSON('a\"b<>')", `"a\"b<>"`},
		{"toJSON number", "toJSON(1.5)", "1.5"},
		{"toJSON null", "toJSON(null)", "null"},
		{"toJSON object", "toJSON(steps.build.outputs)", "{\n  \"version\": \"1.2.3\"\n}"},
		{"toJSON filter", "toJSON(vars.fruits.*.quantity)", "[\n  1,\n  2,\n  1\n]"},
		{"toJSON empty", "toJSON(fromJSON('{}'))", "{}"},
		{"fromJSON object", "fromJSON('{\"a\": [1, true, null]}').a[1]", true},
		{"fromJSON number", "fromJSON('42')", float64(42)},
		{"fromJSON bool", "fromJSON('true')", true},
		{"fromJSON round trip", "toJSON(fromJSON('{\"b\":1,\"a\":[2]}'))", "{\n  \"a\": [\n    2\n  ],\n  \"b\": 1\n}"},
		{"function name case-insensitive", "CONTAINS('abc', 'B')", true},
		{"status success default", "success()", true},
		{"status failure", "failure()", false},
		{"status always", "always()", true},
		{"status cancelled", "cancelled()", false},
		{"string of number", "format('{0}', 0.1)", "0.1"},
		{"string of big number", "format('{0}', 1e15)", "1E+15"},
		{"string of int", "format('{0}', 100)", "100"},
		{"string of thirds", "format('{0}', fromJSON('0.3333333333333333'))", "0.333333333333333"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Evaluate(tt.expr, testContext())
			if err != nil {
				t.Fatalf("Evaluate(%q): %v", tt.expr, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Evaluate(%q) = %#v, want %#v", tt.expr, got, tt.want)
			}
		})
	}
}

func TestEvaluateStatus(t *testing.T) {
	tests := []struct {
		status string
		want   map[string]bool
	}{
		{"", map[string]bool{"success()": true, "failure()": false, "cancelled()": false, "always()": true}},
		{"success", map[string]bool{"success()": true, "failure()": false, "cancelled()": false, "always()": true}},
		{"failure", map[string]bool{"success()": false, "failure()": true, "cancelled()": false, "always()": true}},
		{"cancelled", map[string]bool{"success()": false, "failure()": false, "cancelled()": true, "always()": true}},
		{"FAILURE", map[string]bool{"success()": false, "failure()": true, "cancelled()": false, "always()": true}},
	}
	for _, tt := range tests {
		for e, want := range tt.want {
			got, err := Evaluate(e, &Context{Status: tt.status})
			if err != nil {
				t.Fatalf("status %q: Evaluate(%q): %v", tt.status, e, err)
			}
			if got != want {
				t.Errorf("status %q: Evaluate(%q) = %v, want %v", tt.status, e, got, want)
			}
		}
	}
}

func TestEvaluateCondition(t *testing.T) {
	tests := []struct {
		name   string
		cond   string
		status string
		want   bool
	}{
		{"empty means success", "", "", true},
		{"empty after failure", "", "failure", false},
		{"bare true", "github.event_name == 'push'", "", true},
		{"bare false", "github.event_name == 'pull_request'", "", false},
		{"wrapped", "${{ github.event_name == 'push' }}", "", true},
		{"wrapped with spaces", "  ${{ github.event_name == 'push' }}  ", "", true},
		{"implicit success after failure", "github.event_name == 'push'", "failure", false},
		{"always after failure", "always()", "failure", true},
		{"failure after failure", "${{ failure() }}", "failure", true},
		{"failure when fine", "failure()", "", false},
		{"cancelled", "cancelled()", "cancelled", true},
		{"success explicit after cancel", "success()", "cancelled", false},
		{"status inside and", "always() && matrix.os == 'ubuntu-latest'", "failure", true},
		{"not cancelled", "!cancelled()", "failure", true},
		{"step outcome", "steps.build.outcome == 'success'", "", true},
		{"truthy string", "'false'", "", true},
		{"falsy string", "''", "", false},
		{"falsy zero", "${{ 0 }}", "", false},
		{"object truthy", "github.event", "", true},
		{"mixed text is non-empty", "${{ false }} && ${{ false }}", "", true},
		{"mixed text after failure", "${{ true }} text", "failure", false},
		{"mixed text with always", "${{ always() }} text", "failure", true},
		{"env empty", "env.EMPTY", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testContext()
			c.Status = tt.status
			got, err := EvaluateCondition(tt.cond, c)
			if err != nil {
				t.Fatalf("EvaluateCondition(%q): %v", tt.cond, err)
			}
			if got != tt.want {
				t.Errorf("EvaluateCondition(%q) with status %q = %v, want %v", tt.cond, tt.status, got, tt.want)
			}
		})
	}
}

func TestInterpolate(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"no expressions", "echo $HOME ${VAR} {{ x }}", "echo $HOME ${VAR} {{ x }}"},
		{"one", "echo ${{ env.GREETING }}", "echo Hello"},
		{"several", "${{ matrix.os }}/${{ matrix.go }}/${{matrix.n}}", "ubuntu-latest/1.22/3"},
		{"null is empty", "[${{ github.nope }}]", "[]"},
		{"bool", "${{ true }} ${{ 1 == 2 }}", "true false"},
		{"number", "${{ 1.50 }} ${{ 0x10 }} ${{ -0.0 }}", "1.5 16 0"},
		{"object and array", "${{ github }} ${{ vars.fruits }}", "Object Array"},
		{"braces in string literal", "${{ format('{{{0}}}', 'x') }}!", "{x}!"},
		{"closing braces in string", "a ${{ '}}' }} b", "a }} b"},
		{"multiline", "line1\n  ${{ steps.build.outputs.version }}\nline3", "line1\n  1.2.3\nline3"},
		{"no space", "${{github.event_name}}", "push"},
		{"adjacent", "${{ 'a' }}${{ 'b' }}", "ab"},
		{"dollar before", "$${{ 'x' }}", "$x"},
		{"value with expression text is not re-evaluated", "${{ '${{ secrets.TOKEN }}' }}", "${{ secrets.TOKEN }}"},
		{"secret", "token=${{ secrets.TOKEN }}", "token=s3cr3t"},
		{"toJSON in text", "${{ toJSON(matrix.n) }}", "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Interpolate(tt.in, testContext())
			if err != nil {
				t.Fatalf("Interpolate(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("Interpolate(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestEvaluateTemplate(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want any
	}{
		{"plain text", "ubuntu-latest", "ubuntu-latest"},
		{"single keeps type", "${{ matrix.n }}", float64(3)},
		{"single with white space", " ${{ matrix.n > 1 }} ", true},
		{"single object", "${{ fromJSON('{\"os\":[\"a\",\"b\"]}') }}", map[string]any{"os": []any{"a", "b"}}},
		{"mixed is text", "n=${{ matrix.n }}", "n=3"},
		{"two expressions is text", "${{ matrix.n }}${{ matrix.n }}", "33"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := EvaluateTemplate(tt.in, testContext())
			if err != nil {
				t.Fatalf("EvaluateTemplate(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("EvaluateTemplate(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		eval func() error
		want string
	}{
		{"syntax", func() error { _, err := Evaluate("github.event_name ==", nil); return err },
			`expression "github.event_name ==" at line 1, column 21: unexpected end of input while parsing variable access, function call, null, bool, int, float or string. expecting "IDENT", "(", "INTEGER", "FLOAT", "STRING"`},
		{"double quotes", func() error { _, err := Evaluate(`a == "b"`, nil); return err },
			`expression "a == \"b\"" at line 1, column 6: got unexpected character '"' while lexing expression, expecting 'a'..'z', 'A'..'Z', '_', '0'..'9', ''', '}', '(', ')', '[', ']', '.', '!', '<', '>', '=', '&', '|', '*', ',', ' '. do you mean string literals? only single quotes are available for string delimiter`},
		{"stray closing braces", func() error { _, err := Evaluate("github }} x", nil); return err },
			`expression "github }} x" at line 1, column 8: unexpected }} in the middle of the expression`},
		{"unknown context", func() error { _, err := Evaluate("foo.bar", nil); return err },
			`expression "foo.bar" at line 1, column 1: unknown context "foo"`},
		{"unknown function", func() error { _, err := Evaluate("1 == frob(2)", nil); return err },
			`expression "1 == frob(2)" at line 1, column 6: unknown function frob()`},
		{"arity", func() error { _, err := Evaluate("contains('a')", nil); return err },
			`expression "contains('a')" at line 1, column 1: contains() takes 2 argument(s), got 1`},
		{"status arity", func() error { _, err := Evaluate("success(1)", nil); return err },
			`expression "success(1)" at line 1, column 1: success() takes 0 argument(s), got 1`},
		{"hashFiles", func() error { _, err := Evaluate("hashFiles('**/go.sum')", nil); return err },
			`expression "hashFiles('**/go.sum')" at line 1, column 1: hashFiles() is not supported by Solstice CI: it needs the job's workspace, which expressions here cannot read`},
		{"format too few args", func() error { _, err := Evaluate("format('{0} {1}', 'a')", nil); return err },
			`expression "format('{0} {1}', 'a')" at line 1, column 1: format string "{0} {1}" references argument {1} but only 1 argument(s) follow it`},
		{"format lone brace", func() error { _, err := Evaluate("format('a } b')", nil); return err },
			`expression "format('a } b')" at line 1, column 1: format string "a } b" is invalid at byte 2: a single } must be written }}`},
		{"format bad placeholder", func() error { _, err := Evaluate("format('{x}', 1)", nil); return err },
			`expression "format('{x}', 1)" at line 1, column 1: format string "{x}" is invalid at byte 0: expected {N}, {{ or }}`},
		{"fromJSON bad", func() error { _, err := Evaluate("fromJSON('{nope')", nil); return err },
			`expression "fromJSON('{nope')" at line 1, column 1: fromJSON: parsing "{nope": invalid character 'n' looking for beginning of object key string`},
		{"fromJSON empty", func() error { _, err := Evaluate("fromJSON('')", nil); return err },
			`expression "fromJSON('')" at line 1, column 1: fromJSON: empty input is not JSON`},
		{"fromJSON trailing", func() error { _, err := Evaluate("fromJSON('1 2')", nil); return err },
			`expression "fromJSON('1 2')" at line 1, column 1: fromJSON: parsing "1 2": unexpected data after the JSON value`},
		{"interpolate position", func() error { _, err := Interpolate("echo ok\necho ${{ matrix.os == }}", nil); return err },
			`expression "matrix.os ==" at line 2, column 23: unexpected end of input while parsing variable access, function call, null, bool, int, float or string. expecting "IDENT", "(", "INTEGER", "FLOAT", "STRING"`},
		{"interpolate eval error position", func() error { _, err := Interpolate("a\n  b ${{ fromJSON('x') }}", nil); return err },
			`expression "fromJSON('x')" at line 2, column 9: fromJSON: parsing "x": invalid character 'x' looking for beginning of value`},
		{"not closed", func() error { _, err := Interpolate("echo ${{ matrix.os", nil); return err },
			`expression "matrix.os" at line 1, column 9: the expression is not closed: ${{ without a matching }}`},
		{"empty expression", func() error { _, err := Interpolate("${{ }}", nil); return err },
			`expression "" at line 1, column 5: unexpected end of input while parsing variable access, function call, null, bool, int, float or string. expecting "IDENT", "(", "INTEGER", "FLOAT", "STRING"`},
		{"nested toJSON grows past the limit", func() error {
			_, err := Evaluate(strings.Repeat("toJSON(", 30)+"'\"'"+strings.Repeat(")", 30), nil)
			return err
		}, `expression "` + strings.Repeat("toJSON(", 30) + `'\"'` + strings.Repeat(")", 30) + `" at line 1, column 57: toJSON() makes a string of 12582910 bytes, more than the limit of 10485760`},
		{"condition error", func() error { _, err := EvaluateCondition("${{ success( }}", nil); return err },
			`expression "success(" at line 1, column 14: unexpected end of input while parsing variable access, function call, null, bool, int, float or string. expecting "IDENT", "(", "INTEGER", "FLOAT", "STRING"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.eval()
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
			var e *Error
			if !asError(err, &e) {
				t.Errorf("error %T is not an *expr.Error", err)
			}
		})
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

func TestReferences(t *testing.T) {
	tests := []struct {
		expr      string
		contexts  []string
		functions []string
	}{
		{"github.event_name == 'push'", []string{"github"}, []string{}},
		{"success() && contains(needs.build.outputs.list, matrix.os)", []string{"matrix", "needs"}, []string{"contains", "success"}},
		{"Steps.x.outputs.y || ENV.Z", []string{"env", "steps"}, []string{}},
		{"fromJSON(vars.M)[inputs.i]", []string{"inputs", "vars"}, []string{"fromjson"}},
		{"'literal'", []string{}, []string{}},
		{"frob(x)", []string{"x"}, []string{"frob"}},
	}
	for _, tt := range tests {
		ctx, fn, err := References(tt.expr)
		if err != nil {
			t.Fatalf("References(%q): %v", tt.expr, err)
		}
		if !reflect.DeepEqual(ctx, tt.contexts) || !reflect.DeepEqual(fn, tt.functions) {
			t.Errorf("References(%q) = %q, %q; want %q, %q", tt.expr, ctx, fn, tt.contexts, tt.functions)
		}
	}
	if _, _, err := References("a =="); err == nil {
		t.Error("References of a syntax error returned no error")
	}
	ctx, fn, err := TemplateReferences("echo ${{ matrix.os }} ${{ toJSON(steps) }} done")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ctx, []string{"matrix", "steps"}) || !reflect.DeepEqual(fn, []string{"tojson"}) {
		t.Errorf("TemplateReferences = %q, %q", ctx, fn)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		expr string
		want string // "" for no error; else a substring
	}{
		{"github.sha && steps.a.outputs.b", ""},
		{"format('{0}', 1)", ""},
		{"bogus.x", `unknown context "bogus"`},
		{"join()", "join() takes 1 to 2 arguments, got 0"},
		{"nope()", "unknown function nope()"},
		{"hashFiles('x')", "hashFiles() is not supported"},
	}
	for _, tt := range tests {
		err := Check(tt.expr)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Check(%q) = %v, want nil", tt.expr, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Check(%q) = %v, want an error with %q", tt.expr, err, tt.want)
		}
	}
	if err := CheckTemplate("a ${{ env.X }} b ${{ nope.y }}"); err == nil || !strings.Contains(err.Error(), "column 22") {
		t.Errorf("CheckTemplate error = %v, want one at column 22", err)
	}
}

func TestSplitTemplate(t *testing.T) {
	in := "echo ${{ matrix.os }} and ${{ '}}' }}!"
	segs, err := SplitTemplate(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []Segment{
		{Text: "echo ", Offset: 0},
		{Text: "${{ matrix.os }}", Expression: "matrix.os", Offset: 5},
		{Text: " and ", Offset: 21},
		{Text: "${{ '}}' }}", Expression: "'}}'", Offset: 26},
		{Text: "!", Offset: 37},
	}
	if !reflect.DeepEqual(segs, want) {
		t.Errorf("SplitTemplate = %#v\nwant %#v", segs, want)
	}
	var b strings.Builder
	for _, s := range segs {
		b.WriteString(s.Text)
	}
	if b.String() != in {
		t.Errorf("segments join to %q, want %q", b.String(), in)
	}
}

func TestTemplateBuilder(t *testing.T) {
	tests := []struct {
		name  string
		build func(*TemplateBuilder)
		// want is what the agent's Interpolate must produce from the template.
		want string
	}{
		{"plain", func(b *TemplateBuilder) { b.Text("echo $HOME"); b.Expression("env.GREETING") }, "echo $HOMEHello"},
		{"value with expression", func(b *TemplateBuilder) { b.Text("msg: "); b.Text("${{ secrets.TOKEN }}") }, "msg: ${{ secrets.TOKEN }}"},
		{"junction forms ${{", func(b *TemplateBuilder) { b.Text("$"); b.Text("{{ secrets.TOKEN }}") }, "${{ secrets.TOKEN }}"},
		{"junction ${ + {", func(b *TemplateBuilder) { b.Text("a${"); b.Text("{ secrets.TOKEN }}") }, "a${{ secrets.TOKEN }}"},
		{"quotes", func(b *TemplateBuilder) { b.Text("${{ 'it''s' }}") }, "${{ 'it''s' }}"},
		{"three braces", func(b *TemplateBuilder) { b.Text("$"); b.Text("{{{") }, "${{{"},
		{"nested dollars", func(b *TemplateBuilder) { b.Text("${${{") }, "${${{"},
		{"invalid utf-8 kept", func(b *TemplateBuilder) { b.Text("${{\x93") }, "${{\x93"},
		{"dollar before expression", func(b *TemplateBuilder) { b.Text("$"); b.Expression("'x'") }, "$x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b TemplateBuilder
			tt.build(&b)
			got, err := Interpolate(b.String(), testContext())
			if err != nil {
				t.Fatalf("Interpolate(%q): %v", b.String(), err)
			}
			if got != tt.want {
				t.Errorf("template %q interpolates to %q, want %q", b.String(), got, tt.want)
			}
		})
	}
	if got := Literal("plain $x"); got != "plain $x" {
		t.Errorf("Literal of plain text = %q", got)
	}
}

func TestHelpers(t *testing.T) {
	tests := []struct {
		v      any
		str    string
		truthy bool
	}{
		{nil, "", false},
		{true, "true", true},
		{false, "false", false},
		{0, "0", false},
		{int64(12), "12", true},
		{float32(0.5), "0.5", true},
		{math.NaN(), "NaN", false},
		{"", "", false},
		{"0", "0", true},
		{[]string{}, "Array", true},
		{map[string]string{}, "Object", true},
		{struct{}{}, "", false},
	}
	for _, tt := range tests {
		if got := ToString(tt.v); got != tt.str {
			t.Errorf("ToString(%#v) = %q, want %q", tt.v, got, tt.str)
		}
		if got := Truthy(tt.v); got != tt.truthy {
			t.Errorf("Truthy(%#v) = %v, want %v", tt.v, got, tt.truthy)
		}
	}
}

func TestParseNumber(t *testing.T) {
	tests := []struct {
		in   string
		want float64
	}{
		{"", 0}, {"  ", 0}, {"12", 12}, {" -1.5 ", -1.5}, {"+3", 3}, {".5", 0.5}, {"5.", 5},
		{"1e3", 1000}, {"0x1F", 31}, {"0o17", 15}, {"1e400", math.Inf(1)},
	}
	for _, tt := range tests {
		if got := parseNumber(tt.in); got != tt.want {
			t.Errorf("parseNumber(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	for _, in := range []string{"abc", "1_000", "Infinity", "NaN", "0x", "1e", "--1", ".", "inf", "0b1"} {
		if got := parseNumber(in); !math.IsNaN(got) {
			t.Errorf("parseNumber(%q) = %v, want NaN", in, got)
		}
	}
}
