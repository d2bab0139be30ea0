package expr

import "testing"

func BenchmarkEvaluate(b *testing.B) {
	c := testContext()
	for _, bm := range []struct{ name, expr string }{
		{"property", "github.event_name"},
		{"condition", "github.event_name == 'push' && startsWith(github.ref, 'refs/heads/') || contains(github.event.issue.labels.*.name, 'bug')"},
		{"format", "format('{0}-{1}-{2}', matrix.os, matrix.go, github.run_number)"},
		{"toJSON", "toJSON(github.event)"},
	} {
		b.Run(bm.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Evaluate(bm.expr, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkInterpolate(b *testing.B) {
	c := testContext()
	script := "set -e\necho building ${{ github.repository }} at ${{ github.ref }}\n" +
		"go build -o bin/${{ matrix.os }}-${{ matrix.go }} ./...\n" +
		"echo \"version=${{ steps.build.outputs.version }}\" >> \"$GITHUB_OUTPUT\"\n"
	for b.Loop() {
		if _, err := Interpolate(script, c); err != nil {
			b.Fatal(err)
		}
	}
}
