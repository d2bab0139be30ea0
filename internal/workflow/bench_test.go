package workflow

import (
	"os"
	"testing"

	"github.com/solstice-ci/solstice/internal/expr"
)

// BenchmarkTranslate measures parsing the matrix fixture and translating
// all its legs (11 jobs in all), as solstice exec or a daemon does per task.
func BenchmarkTranslate(b *testing.B) {
	src, err := os.ReadFile("testdata/matrix.yml")
	if err != nil {
		b.Fatal(err)
	}
	ctx := map[string]any{"github": map[string]any{"ref": "refs/heads/main", "repository": "acme/widget"}}
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := Parse("matrix.yml", src); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parse+matrix+translate", func(b *testing.B) {
		for b.Loop() {
			w, err := Parse("matrix.yml", src)
			if err != nil {
				b.Fatal(err)
			}
			for _, j := range w.Jobs {
				legs, err := j.Matrix(&expr.Context{Values: ctx})
				if err != nil {
					b.Fatal(err)
				}
				for i, leg := range legs {
					if _, err := Translate(Input{Workflow: w, Job: j, Matrix: leg, Index: i, Total: len(legs), Contexts: ctx}); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	})
}
