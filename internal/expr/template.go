package expr

import (
	"strings"
)

// template is a string cut into literal text and parsed ${{ }} expressions.
type template struct {
	parts []part
}

// part is literal text (expr == nil) or one expression.
type part struct {
	text string // literal text, or the whole ${{ … }} source for expressions
	expr *parsed
	off  int // byte offset of the part in the input
}

// parseTemplate cuts s into text and expressions and parses each
// expression. An expression ends at the first }} outside a string literal.
func parseTemplate(s string) (*template, error) {
	t := &template{}
	i := 0
	for i < len(s) {
		j := strings.Index(s[i:], "${{")
		if j < 0 {
			t.parts = append(t.parts, part{text: s[i:], off: i})
			break
		}
		if j > 0 {
			t.parts = append(t.parts, part{text: s[i : i+j], off: i})
		}
		start := i + j
		p, end, err := parseExpr(s, start+3, false)
		if err != nil {
			return nil, err
		}
		t.parts = append(t.parts, part{text: s[start:end], expr: p, off: start})
		i = end
	}
	return t, nil
}

// single returns the expression when the template is exactly one
// expression with nothing but white space around it.
func (t *template) single() *parsed {
	var found *parsed
	for _, p := range t.parts {
		if p.expr == nil {
			if strings.TrimSpace(p.text) != "" {
				return nil
			}
			continue
		}
		if found != nil {
			return nil
		}
		found = p.expr
	}
	return found
}

// interpolate evaluates every expression and joins the pieces.
func (t *template) interpolate(c *Context) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		if p.expr == nil {
			b.WriteString(p.text)
			continue
		}
		v, err := p.expr.eval(c)
		if err != nil {
			return "", err
		}
		b.WriteString(toString(v))
		if b.Len() > MaxStringLength {
			return "", p.expr.errorAt(0, tooLong("interpolation", b.Len()).Error())
		}
	}
	return b.String(), nil
}

// Segment is one piece of a template string: literal text, or one ${{ }}
// expression.
type Segment struct {
	// Text is the literal text, or for an expression its whole source
	// including ${{ and }}.
	Text string
	// Expression is the expression without ${{ }} (trimmed); empty for text.
	Expression string
	// Offset is the byte offset of the segment in the string.
	Offset int
}

// IsExpression reports whether the segment is an expression.
func (s Segment) IsExpression() bool { return s.Expression != "" }

// SplitTemplate cuts s into literal text and ${{ }} expressions, checking
// the syntax of every expression. Concatenating the Text of all segments
// gives s back.
func SplitTemplate(s string) ([]Segment, error) {
	t, err := parseTemplate(s)
	if err != nil {
		return nil, err
	}
	out := make([]Segment, 0, len(t.parts))
	for _, p := range t.parts {
		seg := Segment{Text: p.text, Offset: p.off}
		if p.expr != nil {
			seg.Expression = p.expr.src
		}
		out = append(out, seg)
	}
	return out, nil
}

// Literal returns s written so that interpolating it gives s back: every
// ${{ in it becomes the expression ${{ '${{' }}. Strings without ${{ are
// returned unchanged.
func Literal(s string) string {
	var tb TemplateBuilder
	tb.Text(s)
	return tb.String()
}

// QuoteString returns s as an expression string literal: in single quotes,
// with each single quote doubled.
func QuoteString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// TemplateBuilder assembles a template from literal text and expressions
// such that the literal text always reads back as the same text: a ${{ in
// the text, or one formed where the text joins what came before, is written
// as a string-literal expression (${{ '${{' }}). The translator uses it to
// put values it evaluated into templates the agent interpolates later, so a
// value holding ${{ … }} is never evaluated a second time.
type TemplateBuilder struct {
	b strings.Builder
}

// Text appends literal text.
func (tb *TemplateBuilder) Text(s string) {
	if s == "" {
		return
	}
	cur := tb.b.String()
	switch {
	case strings.HasSuffix(cur, "${") && strings.HasPrefix(s, "{"):
		tb.b.WriteString("${{ '{' }}")
		s = s[1:]
	case strings.HasSuffix(cur, "$") && strings.HasPrefix(s, "{{"):
		tb.b.WriteString("${{ '{{' }}")
		s = s[2:]
	}
	tb.b.WriteString(strings.ReplaceAll(s, "${{", "${{ '${{' }}"))
}

// Expression appends the expression src (without ${{ }}) as ${{ src }}.
func (tb *TemplateBuilder) Expression(src string) {
	tb.b.WriteString("${{ " + src + " }}")
}

// String returns the template.
func (tb *TemplateBuilder) String() string { return tb.b.String() }
