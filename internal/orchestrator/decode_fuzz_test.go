// decodeAgentLine (goccy/go-json) must decode every agent line as
// encoding/json would, and never panic on what a guest prints.

package orchestrator

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

func FuzzDecodeLogEvent(f *testing.F) {
	for _, s := range []string{
		`{"seq":1,"kind":"log","time":"2026-01-02T03:04:05.123456789Z","step":0,"stream":"stdout","line":"hello"}` + "\n",
		`{"seq":1,"kind":"log","time":"2026-01-02T03:04:05.123456789Z","step":0,"stream":"stdout","line":"hello","exit_code":0}` + "\n",
		`{"seq":-0,"kind":"log","time":"2026-01-02T03:04:05+02:00","step":-1,"exit_code":0}`,
		`{"seq":01,"kind":"log","time":"2026-01-02T03:04:05Z","step":1,"line":"a\u00e9","exit_code":0}` + "\r\n",
		`{"seq":1,"kind":"log","time":"2026-01-02T03:04:05Z","step":1,"line":"é \xff","exit_code":0} `,
		`{"seq":9223372036854775808,"kind":"log","time":"2026-01-02T03:04:05Z","step":1,"line":"x","exit_code":0}`,
		`{"seq":2,"kind":"step_finished","step":0,"result":"success","exit_code":3,"outputs":{"a":"b"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var a agentapi.Event
		if decodeAgentLine(raw, &a) != nil {
			return
		}
		var b agentapi.Event
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatalf("decodeAgentLine accepted %q, encoding/json: %v", raw, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%q: got %+v, encoding/json %+v", raw, a, b)
		}
	})
}

func FuzzDecodeLogEventEncoded(f *testing.F) {
	f.Add(int64(1), 0, "stdout", "hello world", int64(1700000000123456789), 0)
	f.Add(int64(5), -1, "", "", int64(0), 3600)
	f.Add(int64(5), 2, "stderr", "a\"b\\c<d>&\u2028\t", int64(-5), -7200)
	f.Fuzz(func(t *testing.T, seq int64, step int, stream, line string, ns int64, off int) {
		tm := time.Unix(0, ns).In(time.FixedZone("", (off%86400)/60*60))
		if tm.Year() < 0 || tm.Year() > 9999 {
			return
		}
		ev := agentapi.Event{Seq: seq, Kind: agentapi.KindLog, Time: tm, Step: step, Stream: stream, Line: line}
		raw, err := json.Marshal(&ev)
		if err != nil {
			return
		}
		raw = append(raw, '\n')
		var a, b agentapi.Event
		if err := decodeAgentLine(raw, &a); err != nil {
			t.Fatalf("decodeAgentLine refused %q: %v", raw, err)
		}
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%q: got %+v, encoding/json %+v", raw, a, b)
		}
	})
}
