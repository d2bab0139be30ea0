package jobspec

import (
	stdjson "encoding/json"
	"reflect"
	"testing"
	"time"
)

// The messages are encoded and decoded with github.com/goccy/go-json (three
// times faster than encoding/json on log events). These targets check that
// it decodes what arrives from the queue as encoding/json would, and never
// panics on anything else.

func FuzzDecodeEvent(f *testing.F) {
	ev := Event{Version: Version, JobID: "6f1d3c8e-1b2a-4c3d-9e8f-0a1b2c3d4e5f", Seq: 7, Kind: EventLog, Step: 1,
		Time:  time.Date(2026, 11, 25, 1, 2, 3, 456, time.UTC),
		Lines: []LogLine{{Time: time.Date(2026, 11, 25, 1, 2, 3, 0, time.FixedZone("", 3600)), Stream: "stdout", Text: "hé \"x\" \\ <b>"}}}
	b, _ := stdjson.Marshal(ev)
	f.Add(b)
	f.Add([]byte(`{"version":1,"job_id":"6f1d3c8e-1b2a-4c3d-9e8f-0a1b2c3d4e5f","seq":1,"kind":"job_finished","step":-1,"time":"2026-01-01T00:00:00Z","result":"success","outputs":{"a":"b"}}`))
	f.Add([]byte(`{"version":1,"seq":1e3,"lines":[{"text":"\ud800"}]} trailing`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := DecodeEvent(data)
		var want Event
		stdErr := stdjson.Unmarshal(data, &want)
		if err != nil {
			return // refused: fine whichever decoder refused it
		}
		if stdErr != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, stdErr)
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("%q:\n got %+v\nwant %+v", data, *got, want)
		}
		// What we encode, encoding/json reads back the same.
		enc, err := Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		var back Event
		if err := stdjson.Unmarshal(enc, &back); err != nil {
			t.Fatalf("encoding/json cannot read %s: %v", enc, err)
		}
		// Compared as encoding/json writes them: an empty slice or map
		// comes back nil (omitempty), which is the same message.
		b1, _ := stdjson.Marshal(back)
		b2, _ := stdjson.Marshal(got)
		if string(b1) != string(b2) {
			t.Fatalf("round trip through %s:\n got %s\nwant %s", enc, b1, b2)
		}
	})
}

func FuzzDecodeJobRequest(f *testing.F) {
	f.Add([]byte(`{"version":1,"job_id":"6f1d3c8e-1b2a-4c3d-9e8f-0a1b2c3d4e5f","source":{"platform":"forgejo","instance":"i","task_id":"1"},"project":"a/b","repo_url":"https://x/a/b.git","commit_sha":"0123456789012345678901234567890123456789","runs_on":"linux-test","steps":[{"name":"s","run":"echo hi"}],"env":{"A":"b"},"contexts":{"matrix":{"x":[1,2.5,"s",true,null]}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := DecodeJobRequest(data)
		if err != nil {
			return
		}
		var want JobRequest
		if err := stdjson.Unmarshal(data, &want); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, err)
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("%q:\n got %+v\nwant %+v", data, *got, want)
		}
	})
}
