package workflow

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/expr"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fixtureContexts is the optional <name>.contexts.json next to a workflow.
type fixtureContexts struct {
	GitHub   map[string]any `json:"github"`
	Vars     map[string]any `json:"vars"`
	Needs    map[string]any `json:"needs"`
	Inputs   map[string]any `json:"inputs"`
	KeepName bool           `json:"keep_name"`
	Labels   []string       `json:"labels"`
}

// golden is what a workflow translates to.
type golden struct {
	Plan [][]string  `json:"plan"`
	Jobs []goldenJob `json:"jobs"`
}

type goldenJob struct {
	ID    string      `json:"id"`
	Run   bool        `json:"run"`
	Error string      `json:"error,omitempty"`
	Legs  []goldenLeg `json:"legs,omitempty"`
}

type goldenLeg struct {
	Matrix          map[string]any    `json:"matrix"`
	Strategy        any               `json:"strategy"`
	Name            string            `json:"name"`
	RunsOn          string            `json:"runs_on,omitempty"`
	RunsOnAll       []string          `json:"runs_on_all,omitempty"`
	Skip            bool              `json:"skip,omitempty"`
	Env             map[string]string `json:"env,omitempty"`
	Outputs         map[string]string `json:"outputs,omitempty"`
	TimeoutMinutes  float64           `json:"timeout_minutes,omitempty"`
	ContinueOnError bool              `json:"continue_on_error,omitempty"`
	Checkout        agentapi.Checkout `json:"checkout"`
	Steps           []agentapi.Step   `json:"steps,omitempty"`
}

func loadContexts(t *testing.T, yml string) fixtureContexts {
	t.Helper()
	var fc fixtureContexts
	b, err := os.ReadFile(strings.TrimSuffix(yml, ".yml") + ".contexts.json")
	if err == nil {
		if err := json.Unmarshal(b, &fc); err != nil {
			t.Fatalf("reading contexts of %s: %v", yml, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return fc
}

// translateAll runs the whole flow the way solstice exec does.
func translateAll(t *testing.T, file string, src []byte, fc fixtureContexts) golden {
	t.Helper()
	w, err := Parse(file, src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	layers, err := w.Plan()
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	var g golden
	for _, layer := range layers {
		var ids []string
		for _, j := range layer {
			ids = append(ids, j.ID)
		}
		g.Plan = append(g.Plan, ids)
	}
	for _, layer := range layers {
		for _, j := range layer {
			gh := fc.GitHub
			if gh == nil {
				gh = GitHubContext(w, j, LocalRun{Repository: "acme/widget", SHA: strings.Repeat("ab", 20), Ref: "refs/heads/main"})
			}
			ctx := map[string]any{"github": gh, "vars": fc.Vars, "needs": needsFor(w, j, fc.Needs), "inputs": fc.Inputs}
			gj := goldenJob{ID: j.ID}
			run, err := j.ShouldRun(ctx)
			if err != nil {
				t.Fatalf("job %s: ShouldRun: %v", j.ID, err)
			}
			gj.Run = run
			if run {
				legs, err := j.Matrix(&expr.Context{Values: ctx})
				if err != nil {
					t.Fatalf("job %s: Matrix: %v", j.ID, err)
				}
				for i, leg := range legs {
					tr, err := Translate(Input{Workflow: w, Job: j, Matrix: leg, Index: i, Total: len(legs),
						Contexts: ctx, KeepName: fc.KeepName, Labels: fc.Labels})
					if err != nil {
						t.Fatalf("job %s leg %d: Translate: %v", j.ID, i, err)
					}
					gj.Legs = append(gj.Legs, goldenLeg{
						Matrix: tr.Contexts["matrix"].(map[string]any), Strategy: tr.Contexts["strategy"],
						Name: tr.Name, RunsOn: tr.RunsOn, RunsOnAll: tr.RunsOnAll, Skip: tr.Skip,
						Env: tr.Env, Outputs: tr.Outputs, TimeoutMinutes: tr.TimeoutMinutes,
						ContinueOnError: tr.ContinueOnError, Checkout: tr.Checkout, Steps: tr.Steps,
					})
				}
			}
			g.Jobs = append(g.Jobs, gj)
		}
	}
	return g
}

// needsFor gives a job the needs context of its own needs, as solstice
// exec does. A one-job workflow is a platform payload whose needs the
// server removed: it gets them all.
func needsFor(w *Workflow, j *Job, all map[string]any) map[string]any {
	if len(w.Jobs) == 1 {
		return all
	}
	out := map[string]any{}
	for _, n := range j.Needs {
		if v, ok := all[n.Value]; ok {
			out[n.Value] = v
		}
	}
	return out
}

func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no workflows in testdata")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			g := translateAll(t, filepath.Base(file), src, loadContexts(t, file))
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetIndent("", "  ")
			enc.SetEscapeHTML(false)
			if err := enc.Encode(g); err != nil {
				t.Fatal(err)
			}
			goldenFile := strings.TrimSuffix(file, ".yml") + ".golden.json"
			if *update {
				if err := os.WriteFile(goldenFile, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(goldenFile)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("translation of %s differs from %s (go test -update rewrites it):\n%s", file, goldenFile, diff(string(want), buf.String()))
			}
		})
	}
}

// diff shows the first differing lines.
func diff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return "line " + strconv.Itoa(i+1) + ":\n want: " + w + "\n  got: " + g
		}
	}
	return "(no line differs)"
}
