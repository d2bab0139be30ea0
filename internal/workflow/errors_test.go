package workflow

import (
	"errors"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/expr"
)

// runFlow runs parse, plan, if, matrix and translate of every job and
// returns the first error.
func runFlow(src string, ctx map[string]any) error {
	w, err := Parse("ci.yml", []byte(src))
	if err != nil {
		return err
	}
	layers, err := w.Plan()
	if err != nil {
		return err
	}
	for _, layer := range layers {
		for _, j := range layer {
			run, err := j.ShouldRun(ctx)
			if err != nil {
				return err
			}
			if !run {
				continue
			}
			legs, err := j.Matrix(&expr.Context{Values: ctx})
			if err != nil {
				return err
			}
			for i, leg := range legs {
				if _, err := Translate(Input{Workflow: w, Job: j, Matrix: leg, Index: i, Total: len(legs), Contexts: ctx}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// job wraps steps into a one-job workflow.
func job(body string) string {
	return "on: push\njobs:\n  build:\n    runs-on: linux-test\n" + body
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"yaml syntax", "on: push\njobs:\n  build: [\n", `ci.yml:3:1: could not parse as YAML: did not find expected node content`},
		{"unknown key", job("    steps:\n      - run: x\n    colour: red\n"),
			`ci.yml:7:5: unexpected key "colour" for "job" section. expected one of "concurrency", "container", "continue-on-error", "defaults", "env", "environment", "if", "name", "needs", "outputs", "permissions", "runs-on", "secrets", "services", "snapshot", "steps", "strategy", "timeout-minutes", "uses", "with"`},
		{"several problems in file order", job("    steps:\n      - run: x\n        shel: bash\n    colour: red\n"),
			"ci.yml:7:9: unexpected key \"shel\" for step to run shell command. expected one of \"continue-on-error\", \"env\", \"id\", \"if\", \"name\", \"run\", \"shell\", \"timeout-minutes\", \"working-directory\"\n" +
				`ci.yml:8:5: unexpected key "colour" for "job" section. expected one of "concurrency", "container", "continue-on-error", "defaults", "env", "environment", "if", "name", "needs", "outputs", "permissions", "runs-on", "secrets", "services", "snapshot", "steps", "strategy", "timeout-minutes", "uses", "with"`},
		{"other action", job("    steps:\n      - uses: actions/checkout@v4\n      - name: Setup Go\n        id: go\n        uses: actions/setup-go@v5\n"),
			`ci.yml:9:15: job "build", step 2 ("Setup Go", id go): uses: actions/setup-go@v5 is not supported: Solstice CI runs run: steps and actions/checkout only (the guest has no runtime for actions); write the step as a run: script`},
		{"local action", job("    steps:\n      - uses: ./.github/actions/build\n"),
			`ci.yml:6:15: job "build", step 1: uses: ./.github/actions/build is not supported: Solstice CI runs run: steps and actions/checkout only (the guest has no runtime for actions); write the step as a run: script`},
		{"docker action", job("    steps:\n      - run: x\n      - uses: docker://alpine:3.20\n        name: in docker\n"),
			`ci.yml:7:15: job "build", step 2 ("in docker"): uses: docker://alpine:3.20 is not supported: Solstice CI runs run: steps and actions/checkout only (the guest has no runtime for actions); write the step as a run: script`},
		{"checkout without ref", job("    steps:\n      - uses: actions/checkout\n"),
			`ci.yml:6:15: job "build", step 1: uses: actions/checkout needs a version, as in actions/checkout@v4`},
		{"services", job("    services:\n      db:\n        image: postgres:16\n    steps:\n      - run: x\n"),
			`ci.yml:6:7: job "build": services: is not supported: Solstice CI runs no service containers; start what the job needs in a run: step`},
		{"container", job("    container: debian:12\n    steps:\n      - run: x\n"),
			`ci.yml:5:5: job "build": container: is not supported: Solstice CI runs each job in a VM of the runs-on image, not in a container`},
		{"reusable workflow", "on: push\njobs:\n  call:\n    uses: acme/workflows/.github/workflows/build.yml@main\n",
			`ci.yml:4:11: job "call": calls the reusable workflow acme/workflows/.github/workflows/build.yml@main, which Solstice CI does not support: copy its jobs into this workflow`},
		{"unknown need", "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n  b:\n    needs: [a, bild]\n    runs-on: x\n    steps: [{run: x}]\n",
			`ci.yml:7:16: job "b" needs "bild", which is not a job of this workflow`},
		{"cycle", "on: push\njobs:\n  a:\n    needs: c\n    runs-on: x\n    steps: [{run: x}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: x}]\n  c:\n    needs: b\n    runs-on: x\n    steps: [{run: x}]\n  d:\n    runs-on: x\n    steps: [{run: x}]\n",
			`ci.yml:4:12: jobs need each other in a cycle: a → c → b → a`},
		{"needs itself", "on: push\njobs:\n  a:\n    needs: [a]\n    runs-on: x\n    steps: [{run: x}]\n",
			`ci.yml:4:13: job "a" needs itself`},
		{"duplicate step id", job("    steps:\n      - id: b\n        run: x\n      - id: B\n        run: y\n"),
			`ci.yml:8:13: job "build", step 2 (id B): the step id "B" is already used by step 1 (id b)`},
		{"hashFiles", job("    steps:\n      - run: echo ${{ hashFiles('go.sum') }}\n"),
			`ci.yml:6:14: job "build", step 1: run: expression "hashFiles('go.sum')" at line 1, column 10: hashFiles() is not supported by Solstice CI: it needs the job's workspace, which expressions here cannot read`},
		{"unknown function", job("    steps:\n      - run: x\n        if: frobnicate(github.ref)\n"),
			`ci.yml:7:13: job "build", step 1: if: expression "frobnicate(github.ref)" at line 1, column 1: unknown function frobnicate()`},
		{"runs-on from runtime context", "on: push\njobs:\n  build:\n    runs-on: ${{ env.LABEL }}\n    steps: [{run: x}]\n",
			`ci.yml:4:14: job "build": runs-on: "${{ env.LABEL }}" uses the env context, but only github, vars, matrix, strategy, needs, inputs are available here`},
		{"timeout from env", job("    steps:\n      - run: x\n        timeout-minutes: ${{ env.T }}\n"),
			`ci.yml:7:26: job "build", step 1: timeout-minutes: "${{ env.T }}" uses contexts known only while the job runs; Solstice CI needs this value when it makes the job (github, vars, matrix, strategy, needs and inputs are known then)`},
		{"continue-on-error not a bool", job("    continue-on-error: ${{ github.ref }}\n    steps:\n      - run: x\n"),
			`ci.yml:5:24: job "build": continue-on-error must be true or false, not "refs/heads/main"`},
		{"job if with secrets", job("    if: secrets.X != ''\n    steps:\n      - run: x\n"),
			`ci.yml:5:9: job "build": if: "secrets.X != ''" uses the secrets context, but only github, vars, matrix, strategy, needs, inputs are available here`},
		{"env expression at run time", job("    env: ${{ fromJSON(secrets.ENV) }}\n    steps:\n      - run: x\n"),
			`ci.yml:5:10: job "build": env: "${{ fromJSON(secrets.ENV) }}" is one expression over contexts known only while the job runs; write the variables out one by one`},
		{"checkout another repository", job("    steps:\n      - uses: actions/checkout@v4\n        with:\n          repository: acme/other\n"),
			`ci.yml:8:23: job "build", step 1: actions/checkout with repository: "acme/other" is not supported: the agent checks out the job's own repository at the job's commit only`},
		{"checkout unknown input", job("    steps:\n      - uses: actions/checkout@v4\n        with:\n          sparse-checkout: src\n"),
			`ci.yml:8:28: job "build", step 1: actions/checkout input "sparse-checkout" is not supported by the agent's own checkout (supported: fetch-depth, submodules, path, token, clean, persist-credentials, fetch-tags, show-progress, set-safe-directory)`},
		{"checkout lfs", job("    steps:\n      - uses: actions/checkout@v4\n        with:\n          lfs: true\n"),
			`ci.yml:8:16: job "build", step 1: with.lfs: "true" is not supported: the agent's checkout does not fetch Git LFS objects`},
		{"matrix exclude unknown key", job("    strategy:\n      matrix:\n        os: [a, b]\n        exclude:\n          - arch: arm64\n    steps:\n      - run: x\n"),
			`ci.yml:7:9: job "build": strategy.matrix.exclude[0] names "arch", which is not a row of the matrix`},
		{"matrix all excluded", job("    strategy:\n      matrix:\n        os: [a]\n        exclude:\n          - os: a\n    steps:\n      - run: x\n"),
			`ci.yml:7:9: job "build": strategy.matrix has no combinations (every one is excluded)`},
		{"matrix row from expression not a list", job("    strategy:\n      matrix:\n        os: ${{ github.ref }}\n    steps:\n      - run: x\n"),
			`ci.yml:7:9: job "build": strategy.matrix row "os" must be a sequence of values, but is a string`},
		{"matrix using matrix", job("    strategy:\n      matrix:\n        os: [a, '${{ matrix.x }}']\n    steps:\n      - run: x\n"),
			`ci.yml:7:17: job "build": strategy.matrix: "${{ matrix.x }}" uses the matrix context, but only github, needs, vars, inputs are available here`},
		{"matrix fromJSON of bad output", job("    strategy:\n      matrix: ${{ fromJSON(needs.x.outputs.m) }}\n    steps:\n      - run: x\n"),
			`ci.yml:6:15: job "build": strategy.matrix: expression "fromJSON(needs.x.outputs.m)" at line 1, column 5: fromJSON: empty input is not JSON`},
		{"forgejo quoted literals keep positions", job("    timeout-minutes: \"30\"\n    strategy: {fail-fast: 'false', max-parallel: \"2\", matrix: {a: [1]}}\n    steps:\n      - run: x\n        timeout-minutes: \"5\"\n        colour: red\n"),
			`ci.yml:10:9: unexpected key "colour" for step to run shell command. expected one of "continue-on-error", "env", "id", "if", "name", "run", "shell", "timeout-minutes", "working-directory"`},
		{"quoted text is still not a number", job("    timeout-minutes: \"soon\"\n    steps:\n      - run: x\n"),
			`ci.yml:5:22: expecting a single ${{...}} expression or float number literal, but found plain text node`},
		{"no steps", job("    steps: []\n"),
			"ci.yml:3:3: \"steps\" section is missing in job \"build\"\nci.yml:5:12: \"steps\" section should not be empty"},
	}
	ctx := map[string]any{"github": map[string]any{"ref": "refs/heads/main", "repository": "acme/widget", "sha": strings.Repeat("a", 40)}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runFlow(tt.src, ctx)
			if err == nil {
				t.Fatalf("no error, want:\n%s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
			var we *Error
			if !errors.As(err, &we) {
				t.Errorf("error %T is not a *workflow.Error", err)
			}
		})
	}
}

func TestExpressionErrorsUnwrap(t *testing.T) {
	err := runFlow(job("    steps:\n      - run: echo ${{ github.ref == }}\n"), nil)
	var ee *expr.Error
	if !errors.As(err, &ee) {
		t.Fatalf("error %v does not wrap an *expr.Error", err)
	}
	if ee.Expression != "github.ref ==" {
		t.Errorf("expression = %q", ee.Expression)
	}
}
