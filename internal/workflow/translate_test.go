package workflow

import (
	"strings"
	"testing"
)

// TestSecretsStayOffTheHost checks that nothing secret is substituted on
// the host or carried in the contexts, even when a caller passes it in.
func TestSecretsStayOffTheHost(t *testing.T) {
	src := job(`    steps:
      - run: |
          echo ${{ github.token }} ${{ github['TOKEN'] }} ${{ secrets.X }} ${{ github.sha }}
        env:
          T: ${{ github.token }}
`)
	w, err := Parse("ci.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	ctx := map[string]any{
		"github":  map[string]any{"sha": "abc", "token": "ghs_jobtoken", "gitea_runtime_token": "jwt.jwt.jwt"},
		"secrets": map[string]any{"X": "hunter2"},
		"env":     map[string]any{"A": "b"},
	}
	tr, err := Translate(Input{Workflow: w, Job: w.Jobs[0], Contexts: ctx})
	if err != nil {
		t.Fatal(err)
	}
	run := tr.Steps[0].Run
	if want := "echo ${{ github.token }} ${{ github['TOKEN'] }} ${{ secrets.X }} abc\n"; run != want {
		t.Errorf("run = %q, want %q", run, want)
	}
	if got := tr.Steps[0].Env["T"]; got != "${{ github.token }}" {
		t.Errorf("env T = %q, want the expression", got)
	}
	gh := tr.Contexts["github"].(map[string]any)
	for _, k := range []string{"token", "gitea_runtime_token"} {
		if _, ok := gh[k]; ok {
			t.Errorf("github.%s is carried in the contexts", k)
		}
	}
	for _, k := range []string{"secrets", "env"} {
		if _, ok := tr.Contexts[k]; ok {
			t.Errorf("context %s is carried in the contexts", k)
		}
	}
	for _, s := range tr.Steps {
		for _, v := range []string{s.Run, s.Name, s.Env["T"]} {
			if strings.Contains(v, "hunter2") || strings.Contains(v, "ghs_jobtoken") {
				t.Errorf("a secret leaked into step %+v", s)
			}
		}
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		runsOn string
		served []string
		want   string
		err    string
	}{
		{"linux-test", nil, "linux-test", ""},
		{"[self-hosted, omnios-r151056]", nil, "omnios-r151056", ""},
		{"[self-hosted]", nil, "self-hosted", ""},
		{"{group: vms, labels: [freebsd-14]}", nil, "freebsd-14", ""},
		{"[self-hosted, linux-test, omnios-r151056]", []string{"OmniOS-r151056"}, "OmniOS-r151056", ""},
		{"${{ fromJSON('[\"a\", \"b\"]') }}", []string{"b"}, "b", ""},
		{"[a, b]", []string{"c"}, "", `ci.yml:3:3: job "build": runs-on a, b names no label this runner serves (c)`},
		{"${{ fromJSON('{}') }}", nil, "", `ci.yml:4:14: job "build": runs-on must be a label or a list of labels, not a mapping`},
	}
	for _, tt := range tests {
		src := "on: push\njobs:\n  build:\n    runs-on: " + tt.runsOn + "\n    steps: [{run: x}]\n"
		w, err := Parse("ci.yml", []byte(src))
		if err != nil {
			t.Fatalf("runs-on %s: %v", tt.runsOn, err)
		}
		tr, err := Translate(Input{Workflow: w, Job: w.Jobs[0], Labels: tt.served})
		switch {
		case tt.err != "":
			if err == nil || err.Error() != tt.err {
				t.Errorf("runs-on %s served %v: error %v, want %s", tt.runsOn, tt.served, err, tt.err)
			}
		case err != nil:
			t.Errorf("runs-on %s: %v", tt.runsOn, err)
		case tr.RunsOn != tt.want:
			t.Errorf("runs-on %s served %v: RunsOn = %q, want %q", tt.runsOn, tt.served, tr.RunsOn, tt.want)
		}
	}
}

func TestSkippedJob(t *testing.T) {
	src := "on: push\njobs:\n  build:\n    name: Build ${{ needs.x.outputs.v }}\n    if: github.ref == 'refs/heads/release'\n    runs-on: ${{ fromJSON(needs.x.outputs.labels) }}\n    steps: [{run: x}]\n"
	w, err := Parse("ci.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(Input{Workflow: w, Job: w.Jobs[0], Contexts: map[string]any{"github": map[string]any{"ref": "refs/heads/main"}}})
	if err != nil {
		t.Fatalf("a skipped job must translate without evaluating its runs-on: %v", err)
	}
	if !tr.Skip || tr.Name != "Build " || len(tr.Steps) != 0 || tr.RunsOn != "" {
		t.Errorf("skipped job = %+v", tr)
	}
}
