package expr

import (
	"strings"
	"testing"
)

func FuzzEvaluate(f *testing.F) {
	for _, s := range []string{
		"github.event_name == 'push' && 'yes' || 'no'",
		"contains(github.event.issue.labels.*.name, 'bug')",
		"format('{{{0}}}', toJSON(fromJSON('{\"a\":[1,2]}')))",
		"vars.fruits.*.name[0]",
		"!(1 < '2') >= null",
		"join(vars.nested.*.x.*, '-')",
		"0xff == '0xFF'",
		"github['event'].commits[1.5].author['NAME']",
		"startsWith(endsWith(a, b), c)",
		"always() || cancelled() && failure()",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := testContext()
		v, err := Evaluate(s, c)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("Evaluate(%q) error %T is not *Error: %v", s, err, err)
			}
			return
		}
		// Whatever the value, it converts to text and JSON without panics.
		_ = ToString(v)
		if _, err := toJSON(v); err != nil {
			t.Fatalf("toJSON of the value of %q: %v", s, err)
		}
		if _, _, err := References(s); err != nil {
			t.Fatalf("References(%q) fails on an expression that evaluates: %v", s, err)
		}
		if _, err := EvaluateCondition(s, c); err != nil {
			t.Fatalf("EvaluateCondition(%q) fails on an expression that evaluates: %v", s, err)
		}
	})
}

func FuzzInterpolate(f *testing.F) {
	for _, s := range []string{
		"echo ${{ matrix.os }} $HOME ${VAR}",
		"${{ '}}' }}${{ format('{0}', 1) }}",
		"${{ steps.build.outputs.version",
		"$${{ 1 }}}}",
		"a\n${{ toJSON(github.event) }}\nb",
		"${{ }}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := testContext()
		out, err := Interpolate(s, c)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("Interpolate(%q) error %T is not *Error: %v", s, err, err)
			}
			return
		}
		if !strings.Contains(s, "${{") && out != s {
			t.Fatalf("Interpolate(%q) changed text without expressions to %q", s, out)
		}
		segs, err := SplitTemplate(s)
		if err != nil {
			t.Fatalf("SplitTemplate(%q) fails where Interpolate works: %v", s, err)
		}
		var b strings.Builder
		for _, seg := range segs {
			b.WriteString(seg.Text)
		}
		if b.String() != s {
			t.Fatalf("segments of %q join to %q", s, b.String())
		}
		if _, err := EvaluateTemplate(s, c); err != nil {
			t.Fatalf("EvaluateTemplate(%q) fails where Interpolate works: %v", s, err)
		}
	})
}

// FuzzTemplateBuilder checks that literal text put through TemplateBuilder
// always reads back unchanged, whatever it holds.
func FuzzTemplateBuilder(f *testing.F) {
	f.Add("$", "{{ secrets.TOKEN }}", "x")
	f.Add("a${", "{ b }}", "")
	f.Add("${{ 'q''q' }}", "}}", "${{")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		var tb TemplateBuilder
		tb.Text(a)
		tb.Text(b)
		tb.Text(c)
		got, err := Interpolate(tb.String(), testContext())
		if err != nil {
			t.Fatalf("template %q of texts %q %q %q: %v", tb.String(), a, b, c, err)
		}
		if want := a + b + c; got != want {
			t.Fatalf("template %q reads back as %q, want %q", tb.String(), got, want)
		}
	})
}
