package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

func FuzzParseJob(f *testing.F) {
	f.Add([]byte("repo_url: file:///r\ncommit_sha: " + strings.Repeat("a", 40) + "\nsteps: [{run: echo}]"))
	f.Add([]byte("checkout: {skip: true, fetch_depth: -1}\nsteps: [{uses: actions/checkout@v4, with: {path: x}}]"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		job, err := ParseJob("fuzz.yaml", data)
		if err == nil && job.CommitSHA != "" && !shaRE.MatchString(job.CommitSHA) {
			t.Fatalf("accepted a bad SHA %q", job.CommitSHA)
		}
	})
}

func FuzzParseKDL(f *testing.F) {
	f.Add([]byte("workflow \"x\" {\n env A=\"1\"\n setup \"s\"\n step \"a\" run=\"b\"\n os \"illumos\" {\n  step \"a\" run=\"c\"\n }\n}\n"))
	f.Add([]byte("step \"a\" {\n run \"x\"\n timeout-minutes 1.5\n}"))
	f.Add([]byte("/- step \"a\"\nstep r#\"raw\"# run=\"\\u{41}\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		w, err := ParseKDL("fuzz.kdl", data)
		if err != nil {
			return
		}
		for _, goos := range []string{"linux", "illumos"} {
			steps, _ := w.For(goos)
			for _, s := range steps {
				if strings.TrimSpace(s.Run) == "" {
					t.Fatalf("a step without a run script was accepted: %+v", s)
				}
			}
		}
	})
}

// FuzzMask checks that a secret never leaves through the line writer,
// however the output is cut into writes.
func FuzzMask(f *testing.F) {
	f.Add("hunter2-secret", "before hunter2-secret after\n", uint8(7))
	f.Add("multi\nline-secret-x", "multi\nline-secret-x\n", uint8(3))
	f.Add("a b", strings.Repeat("z", MaxLine)+"a b", uint8(1))
	f.Fuzz(func(t *testing.T, secret, text string, cut uint8) {
		if len(strings.TrimSpace(secret)) < 4 || strings.Contains(secret, "*") || strings.ContainsAny(secret, "\r\n\uFFFD") {
			return
		}
		m := NewMasker(secret)
		var out syncBuffer
		e := newEmitter(&out, nil, m, nil)
		w := &lineWriter{e: e, step: 0, stream: StreamStdout}
		n := int(cut)%max(len(text), 1) + 1
		for i := 0; i < len(text); i += n {
			w.Write([]byte(text[i:min(i+n, len(text))]))
		}
		w.Flush()
		e.close()
		for _, l := range decodeLines(t, out.String()) {
			if strings.Contains(l, secret) {
				t.Fatalf("secret %q leaked in line %q", secret, l)
			}
		}
	})
}

// FuzzLogEventJSON checks the hand-written log event encoder against
// encoding/json for any (valid UTF-8) line.
func FuzzLogEventJSON(f *testing.F) {
	f.Add("plain", "stdout")
	f.Add("\u2028<&>\"\\\x00\x1f", "system")
	f.Fuzz(func(t *testing.T, line, stream string) {
		line = strings.ToValidUTF8(line, "\uFFFD")
		stream = strings.ToValidUTF8(stream, "\uFFFD")
		ev := agentapi.Event{Seq: 7, Kind: agentapi.KindLog, Step: 3, Stream: stream, Line: line}
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendLogEvent(nil, &ev); string(got) != string(want)+"\n" {
			t.Fatalf("got %s want %s", got, want)
		}
	})
}
