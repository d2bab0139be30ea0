package workflow

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/solstice-ci/solstice/internal/expr"
)

// FuzzParseTranslate feeds arbitrary YAML through the whole flow: no input
// may panic, and every error must be a positioned workflow error.
func FuzzParseTranslate(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yml")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(job("    strategy:\n      matrix:\n        a: [1, 2]\n        include: [{a: 1, b: x}, {c: '${{ github.ref }}'}]\n    steps:\n      - run: echo ${{ matrix.a }}\n")))
	f.Add([]byte("on: push\njobs:\n  a:\n    needs: b\n    runs-on: x\n    steps: [{run: x}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: x}]\n"))
	ctx := map[string]any{
		"github": map[string]any{"ref": "refs/heads/main", "repository": "acme/widget", "sha": "0123456789abcdef0123456789abcdef01234567"},
		"needs":  map[string]any{"a": map[string]any{"result": "success", "outputs": map[string]any{"m": `{"x":[1,2]}`}}},
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		w, err := Parse("fuzz.yml", src)
		if err != nil {
			checkErr(t, err)
			return
		}
		layers, err := w.Plan()
		if err != nil {
			checkErr(t, err)
			return
		}
		for _, layer := range layers {
			for _, j := range layer {
				if _, err := j.ShouldRun(ctx); err != nil {
					checkErr(t, err)
					continue
				}
				legs, err := j.Matrix(&expr.Context{Values: ctx})
				if err != nil {
					checkErr(t, err)
					continue
				}
				for i, leg := range legs {
					if _, err := Translate(Input{Workflow: w, Job: j, Matrix: leg, Index: i, Total: len(legs), Contexts: ctx}); err != nil {
						checkErr(t, err)
					}
				}
			}
		}
	})
}

func checkErr(t *testing.T, err error) {
	t.Helper()
	var we *Error
	if !errors.As(err, &we) {
		t.Fatalf("error %T is not a *workflow.Error: %v", err, err)
	}
	if we.File != "fuzz.yml" {
		t.Fatalf("error does not name the file: %v", err)
	}
}
