package workflow

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/expr"
)

// matrixJob parses a one-job workflow with the given strategy.matrix body
// (indented as under "matrix:").
func matrixJob(t *testing.T, matrix string) *Job {
	t.Helper()
	src := "on: push\njobs:\n  m:\n    runs-on: x\n    strategy:\n      matrix:\n" + matrix + "    steps: [{run: x}]\n"
	w, err := Parse("m.yml", []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%s\n%v", src, err)
	}
	return w.Jobs[0]
}

func TestMatrix(t *testing.T) {
	ctx := map[string]any{
		"github": map[string]any{"event_name": "push"},
		"needs": map[string]any{"setup": map[string]any{"result": "success", "outputs": map[string]any{
			"list":    `["a","b"]`,
			"matrix":  `{"os":["x","y"],"include":[{"os":"x","big":true}]}`,
			"include": `[{"os":"z"}]`,
		}}},
		"inputs": map[string]any{"extra": "q"},
	}
	tests := []struct {
		name   string
		matrix string
		want   string // JSON of the combinations
	}{
		{"product order", "        a: [1, 2]\n        b: [x, y]\n",
			`[{"a":1,"b":"x"},{"a":1,"b":"y"},{"a":2,"b":"x"},{"a":2,"b":"y"}]`},
		{"yaml types", "        v: [1.20, '1.20', true, 'true', null, 0x10, ~]\n",
			`[{"v":1.2},{"v":"1.20"},{"v":true},{"v":"true"},{"v":null},{"v":16},{"v":null}]`},
		{"exclude partial", "        a: [1, 2]\n        b: [x, y]\n        exclude:\n          - b: y\n",
			`[{"a":1,"b":"x"},{"a":2,"b":"x"}]`},
		{"exclude full", "        a: [1, 2]\n        b: [x, y]\n        exclude:\n          - {a: 1, b: y}\n          - {a: 2, b: x}\n",
			`[{"a":1,"b":"x"},{"a":2,"b":"y"}]`},
		{"exclude compares types", "        a: [1, '1']\n        exclude:\n          - a: '1'\n",
			`[{"a":1}]`},
		{"include extends matching", "        a: [1, 2]\n        include:\n          - {a: 2, extra: yes}\n",
			`[{"a":1},{"a":2,"extra":"yes"}]`},
		{"include without row keys extends all", "        a: [1, 2]\n        include:\n          - {extra: e}\n",
			`[{"a":1,"extra":"e"},{"a":2,"extra":"e"}]`},
		{"include never overwrites original values", "        a: [1]\n        b: [x]\n        include:\n          - {a: 1, b: z}\n",
			`[{"a":1,"b":"x"},{"a":1,"b":"z"}]`},
		{"include overwrites added values", "        a: [1, 2]\n        include:\n          - {c: first}\n          - {a: 2, c: second}\n",
			`[{"a":1,"c":"first"},{"a":2,"c":"second"}]`},
		{"include adds new combination", "        a: [1]\n        include:\n          - {a: 3, c: new}\n",
			`[{"a":1},{"a":3,"c":"new"}]`},
		{"include does not match added combinations", "        a: [1]\n        include:\n          - {a: 3}\n          - {a: 3, c: again}\n",
			`[{"a":1},{"a":3},{"a":3,"c":"again"}]`},
		{"include only", "        include:\n          - {os: a, v: 1}\n          - {os: b}\n",
			`[{"os":"a","v":1},{"os":"b"}]`},
		{"include after everything excluded", "        a: [1]\n        exclude: [{a: 1}]\n        include: [{a: 9}]\n",
			`[{"a":9}]`},
		{"object values", "        cfg:\n          - {cc: gcc, v: 13}\n          - {cc: clang, v: 18}\n        include:\n          - cfg: {cc: gcc, v: 13}\n            flags: -O2\n",
			`[{"cfg":{"cc":"gcc","v":13},"flags":"-O2"},{"cfg":{"cc":"clang","v":18}}]`},
		{"include key case-insensitive", "        os: [a, b]\n        include:\n          - {OS: b, x: 1}\n",
			`[{"os":"a"},{"os":"b","x":1}]`},
		{"row from expression", "        os: ${{ fromJSON(needs.setup.outputs.list) }}\n",
			`[{"os":"a"},{"os":"b"}]`},
		{"value from expression", "        os: [a, '${{ inputs.extra }}', 'pre-${{ github.event_name }}']\n",
			`[{"os":"a"},{"os":"q"},{"os":"pre-push"}]`},
		{"include from expression", "        os: [x]\n        include: ${{ fromJSON(needs.setup.outputs.include) }}\n",
			`[{"os":"x"},{"os":"z"}]`},
		{"whole matrix from expression", "        ${{ fromJSON(needs.setup.outputs.matrix) }}\n",
			`[{"big":true,"os":"x"},{"os":"y"}]`},
		{"forgejo single-element arrays", "        extra:\n        - \"yes\"\n        go:\n        - \"1.22\"\n        os:\n        - ubuntu-latest\n",
			`[{"extra":"yes","go":"1.22","os":"ubuntu-latest"}]`},
		{"anchors and aliases", "        a: &vals [1, 2]\n        b: *vals\n",
			`[{"a":1,"b":1},{"a":1,"b":2},{"a":2,"b":1},{"a":2,"b":2}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := matrixJob(t, tt.matrix)
			got, err := j.Matrix(&expr.Context{Values: ctx})
			if err != nil {
				t.Fatalf("Matrix: %v", err)
			}
			var want []map[string]any
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				b, _ := json.Marshal(got)
				t.Errorf("Matrix =\n %s\nwant\n %s", b, tt.want)
			}
		})
	}
}

func TestMatrixLimit(t *testing.T) {
	var b strings.Builder
	for _, row := range []string{"a", "b", "c"} {
		b.WriteString("        " + row + ": [")
		for i := range 7 {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(string(rune('0' + i)))
		}
		b.WriteString("]\n")
	}
	j := matrixJob(t, b.String()) // 7³ = 343 combinations
	_, err := j.Matrix(nil)
	want := `m.yml:7:9: job "m": strategy.matrix makes 343 combinations, more than GitHub's limit of 256`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

func TestMatrixNone(t *testing.T) {
	w, err := Parse("n.yml", []byte("on: push\njobs:\n  j:\n    runs-on: x\n    steps: [{run: x}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := w.Jobs[0].Matrix(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0]) != 0 {
		t.Errorf("Matrix of a job without one = %v, want one empty combination", got)
	}
}

func TestPlan(t *testing.T) {
	src := `on: push
jobs:
  deploy:
    needs: [test, lint]
    runs-on: x
    steps: [{run: x}]
  test:
    needs: Build
    runs-on: x
    steps: [{run: x}]
  build:
    runs-on: x
    steps: [{run: x}]
  lint:
    runs-on: x
    steps: [{run: x}]
  docs:
    needs: [build, build]
    runs-on: x
    steps: [{run: x}]
`
	w, err := Parse("p.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, j := range w.Jobs {
		ids = append(ids, j.ID)
	}
	if got := strings.Join(ids, " "); got != "deploy test build lint docs" {
		t.Errorf("jobs in file order = %s", got)
	}
	layers, err := w.Plan()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range layers {
		var names []string
		for _, j := range l {
			names = append(names, j.ID)
		}
		got = append(got, strings.Join(names, ","))
	}
	if want := "build,lint | test,docs | deploy"; strings.Join(got, " | ") != want {
		t.Errorf("Plan = %s, want %s", strings.Join(got, " | "), want)
	}
	if w.Job("BUILD") == nil || w.Job("nope") != nil {
		t.Error("Job lookup by id is not case-insensitive or finds unknown jobs")
	}
}

func TestShouldRun(t *testing.T) {
	tests := []struct {
		cond    string
		results map[string]string // need → result
		want    bool
	}{
		{"", map[string]string{"a": "success"}, true},
		{"", map[string]string{"a": "success", "b": "failure"}, false},
		{"", map[string]string{"a": "skipped"}, false},
		{"always()", map[string]string{"a": "failure"}, true},
		{"failure()", map[string]string{"a": "failure"}, true},
		{"failure()", map[string]string{"a": "skipped"}, false},
		{"success()", map[string]string{"a": "skipped"}, false},
		{"cancelled()", map[string]string{"a": "failure", "b": "cancelled"}, true},
		{"${{ !cancelled() }}", map[string]string{"a": "failure"}, true},
		{"needs.a.result == 'skipped'", map[string]string{"a": "skipped"}, false},
		{"always() && needs.a.result == 'skipped'", map[string]string{"a": "skipped"}, true},
		{"github.event_name == 'push'", map[string]string{"a": "success"}, true},
		{"github.event_name == 'pull_request'", map[string]string{"a": "success"}, false},
		{"needs.a.outputs.deploy == 'yes'", map[string]string{"a": "success"}, true},
	}
	for _, tt := range tests {
		src := "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n  b:\n    runs-on: x\n    steps: [{run: x}]\n  j:\n    needs: [a, b]\n    runs-on: x\n    steps: [{run: x}]\n"
		if tt.cond != "" {
			src += "    if: " + quoteYAML(tt.cond) + "\n"
		}
		w, err := Parse("r.yml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		results := map[string]JobResult{}
		for id, r := range tt.results {
			results[id] = JobResult{Result: r, Outputs: map[string]string{"deploy": "yes"}}
		}
		ctx := map[string]any{"github": map[string]any{"event_name": "push"}, "needs": NeedsContext(results)}
		got, err := w.Job("j").ShouldRun(ctx)
		if err != nil {
			t.Fatalf("if %q: %v", tt.cond, err)
		}
		if got != tt.want {
			t.Errorf("if %q with needs %v = %v, want %v", tt.cond, tt.results, got, tt.want)
		}
	}
}

func quoteYAML(s string) string { return "\"" + strings.ReplaceAll(s, "\"", "\\\"") + "\"" }

func TestGitHubContext(t *testing.T) {
	w, err := Parse("ci.yml", []byte("name: CI\non: push\njobs:\n  build:\n    runs-on: x\n    steps: [{run: x}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	sha := strings.Repeat("c", 40)
	gh := GitHubContext(w, w.Jobs[0], LocalRun{Repository: "acme/widget", SHA: sha, Ref: "refs/tags/v1.0"})
	c := &expr.Context{Values: map[string]any{"github": gh}}
	for e, want := range map[string]any{
		"github.sha":                              sha,
		"github.ref_name":                         "v1.0",
		"github.ref_type":                         "tag",
		"github.repository_owner":                 "acme",
		"github.event.repository.name":            "widget",
		"github.event.head_commit.id":             sha,
		"github.event_name":                       "push",
		"github.job":                              "build",
		"github.workflow":                         "CI",
		"github.server_url":                       "https://github.com",
		"github.api_url":                          "https://api.github.com",
		"github.workspace":                        "/root/work",
		"github.actor == github.triggering_actor": true,
	} {
		got, err := expr.Evaluate(e, c)
		if err != nil {
			t.Fatalf("%s: %v", e, err)
		}
		if got != want {
			t.Errorf("%s = %#v, want %#v", e, got, want)
		}
	}
	gh = GitHubContext(w, nil, LocalRun{Repository: "o/r", SHA: sha, Ref: "refs/heads/dev", ServerURL: "https://git.example.org/"})
	if gh["api_url"] != "https://git.example.org/api/v3" || gh["ref_type"] != "branch" || gh["ref_name"] != "dev" {
		t.Errorf("github context for another server = api_url %v, ref_type %v, ref_name %v", gh["api_url"], gh["ref_type"], gh["ref_name"])
	}
}
