package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// MaxLine is the longest log line the agent sends as one event; a longer
// line is split into pieces of at most this many bytes.
const MaxLine = 16 * 1024

// Streams of log lines.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	StreamSystem = "system" // the agent's own lines: fetch, step headers, errors
)

// Buffering of the two outputs. One write per line made the agent slow
// into a pipe (docs/benchmarks.md): each stream now goes out in blocks of up
// to outBufSize, written when the output pauses for flushPause, at the
// latest flushMaxDelay after the oldest byte waiting (which keeps the
// agent's share of log latency under 50 ms, with room for a late timer),
// before the agent starts a command (flush), and when the job ends (close).
const (
	outBufSize    = 64 << 10
	flushPause    = 2 * time.Millisecond
	flushMaxDelay = 40 * time.Millisecond
)

// emitter writes the agent's two outputs: JSON event lines (to events, may
// be nil) and the human log (to human, may be nil), each through a buffer
// of its own; see outBufSize. Everything it writes has passed the masker.
// close must be called at the end: until then output may wait in the
// buffers.
type emitter struct {
	mu     sync.Mutex
	events *bufio.Writer
	human  *bufio.Writer
	mask   *Masker
	now    func() time.Time
	seq    int64
	err    error // first write error of the event stream

	// The timer runs tick while output waits in the buffers (armed, since
	// when). wrote says whether a line was written since the last tick.
	pause, maxDelay time.Duration // flushPause, flushMaxDelay; tests change them
	timer           *time.Timer
	armed, wrote    bool
	since           time.Time
	closed          bool // by close: every write goes out at once
}

func newEmitter(events, human io.Writer, mask *Masker, now func() time.Time) *emitter {
	if now == nil {
		now = time.Now
	}
	e := &emitter{mask: mask, now: now, pause: flushPause, maxDelay: flushMaxDelay}
	if events != nil {
		e.events = bufio.NewWriterSize(events, outBufSize)
	}
	if human != nil {
		e.human = bufio.NewWriterSize(human, outBufSize)
	}
	return e
}

// wroteLocked is called once per event or line written (to one output or
// both): it arms the flush timer if it is not armed yet.
func (e *emitter) wroteLocked() {
	if e.closed {
		e.flushLocked()
		return
	}
	if e.armed {
		e.wrote = true
		return
	}
	e.armed, e.wrote, e.since = true, false, time.Now()
	d := min(e.pause, e.maxDelay)
	if e.timer == nil {
		e.timer = time.AfterFunc(d, e.tick)
	} else {
		e.timer.Reset(d)
	}
}

// tick runs on the timer: it writes the buffers out when nothing was
// written since the last tick (so output that stops leaves within two
// pauses) or the oldest byte has waited maxDelay, and otherwise comes back
// after another pause.
func (e *emitter) tick() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || !e.armed {
		return
	}
	now := time.Now()
	deadline := e.since.Add(e.maxDelay)
	if e.wrote && now.Before(deadline) {
		e.wrote = false
		e.timer.Reset(min(e.pause, deadline.Sub(now)))
		return
	}
	e.armed, e.wrote = false, false
	e.flushLocked()
}

// flush writes out what is buffered, before the agent starts a command.
func (e *emitter) flush() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushLocked()
}

// close writes out what is buffered and stops the timer; from then on
// every write goes out at once. It can be called more than once.
func (e *emitter) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed, e.armed = true, false
	if e.timer != nil {
		e.timer.Stop()
	}
	e.flushLocked()
}

func (e *emitter) flushLocked() {
	if e.events != nil && e.err == nil {
		if err := e.events.Flush(); err != nil {
			e.err = fmt.Errorf("writing events: %w", err)
		}
	}
	if e.human != nil {
		_ = e.human.Flush() // as for every human line: nowhere to report it
	}
}

// emit stamps ev with the next sequence number and the time and writes it.
func (e *emitter) emit(ev agentapi.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.emitLocked(ev)
	e.wroteLocked()
}

func (e *emitter) emitLocked(ev agentapi.Event) {
	e.seq++
	ev.Seq = e.seq
	if ev.Name != "" {
		ev.Name = e.mask.Replace(ev.Name)
	}
	for i, n := range ev.Steps {
		ev.Steps[i] = e.mask.Replace(n)
	}
	if ev.Time.IsZero() {
		ev.Time = e.now().UTC()
	}
	if e.events == nil || e.err != nil {
		return
	}
	var b []byte
	if ev.Kind == agentapi.KindLog {
		// The hot path: no reflection, encoded in place in the buffer.
		b = appendLogEvent(e.events.AvailableBuffer(), &ev)
	} else {
		j, err := json.Marshal(ev)
		if err != nil {
			e.err = fmt.Errorf("encoding event %d: %w", ev.Seq, err)
			return
		}
		b = append(j, '\n')
	}
	if _, err := e.events.Write(b); err != nil {
		e.err = fmt.Errorf("writing event %d: %w", ev.Seq, err)
	}
}

// humanf writes one line of the human log with a timestamp.
func (e *emitter) humanf(format string, args ...any) {
	if e.human == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.humanLocked(e.now(), fmt.Sprintf(format, args...))
	e.wroteLocked()
}

func (e *emitter) humanLocked(t time.Time, line string) {
	if e.human == nil {
		return
	}
	b := t.AppendFormat(e.human.AvailableBuffer(), "15:04:05.000")
	b = append(append(append(b, ' '), line...), '\n')
	_, _ = e.human.Write(b)
}

// line sends one (already complete, not yet masked) log line of step. A
// line longer than MaxLine after masking leaves as several.
func (e *emitter) line(step int, stream, text string) {
	text = strings.ToValidUTF8(e.mask.Replace(text), "\uFFFD")
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.now().UTC()
	prefix := "  "
	if stream == StreamStderr {
		prefix = "! "
	} else if stream == StreamSystem {
		prefix = "# "
	}
	for {
		piece := text
		if len(piece) > MaxLine {
			cut := MaxLine
			for cut > MaxLine-utf8.UTFMax && !utf8.RuneStart(text[cut]) {
				cut--
			}
			piece = text[:cut]
		}
		text = text[len(piece):]
		e.emitLocked(agentapi.Event{Kind: agentapi.KindLog, Step: step, Stream: stream, Line: piece, Time: t})
		e.humanLocked(t, prefix+piece)
		if text == "" {
			e.wroteLocked()
			return
		}
	}
}

// system sends a line of the agent's own, masked like every other line.
func (e *emitter) system(step int, format string, args ...any) {
	e.line(step, StreamSystem, fmt.Sprintf(format, args...))
}

// annotation sends an ::error::/::warning::/::notice:: annotation.
func (e *emitter) annotation(step int, a annotation) {
	e.emit(agentapi.Event{Kind: agentapi.KindAnnotation, Step: step, Level: a.level,
		Message: strings.ToValidUTF8(e.mask.Replace(a.message), "\uFFFD"),
		File:    e.mask.Replace(a.file), LineNo: a.line, Title: e.mask.Replace(a.title)})
}

// Err is the first error writing the event stream.
func (e *emitter) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// lineWriter cuts one output stream of a step into lines, handles workflow
// commands in them and sends them through the emitter. A secret split
// across two writes is still masked: bytes are held until a newline, or, in
// a line longer than MaxLine, until no masked value can straddle the cut.
type lineWriter struct {
	e      *emitter
	cmds   *commands
	step   int
	stream string
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := indexNewline(w.buf)
		if i < 0 {
			break
		}
		line := w.buf[:i]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		w.handle(string(line))
		w.buf = w.buf[i+1:]
	}
	for len(w.buf) >= MaxLine {
		w.emitPiece(MaxLine)
	}
	if len(w.buf) == 0 {
		w.buf = nil // do not keep a large backing array alive
	}
	return len(p), nil
}

func indexNewline(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// emitPiece sends a piece of at most limit bytes of a long line.
func (w *lineWriter) emitPiece(limit int) {
	s := string(w.buf[:limit])
	cut := w.e.mask.SafeCut(s)
	if cut == 0 {
		cut = limit // a masked value longer than a line piece: nothing better to do
	}
	for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) && cut > len(s)-utf8.UTFMax {
		cut--
	}
	w.e.line(w.step, w.stream, s[:cut])
	w.buf = w.buf[cut:]
}

// Flush sends what is left of an unterminated last line.
func (w *lineWriter) Flush() {
	for len(w.buf) > 0 {
		if len(w.buf) > MaxLine {
			w.emitPiece(MaxLine)
			continue
		}
		w.handle(string(w.buf))
		w.buf = nil
	}
}

func (w *lineWriter) handle(line string) {
	if w.cmds != nil {
		if a, ok := w.cmds.process(line); ok && a != nil {
			w.e.annotation(w.step, *a)
		}
	}
	w.e.line(w.step, w.stream, line)
}

// appendLogEvent encodes a log event as encoding/json would (the same keys
// and order as agentapi.Event), for the line-per-event hot path.
func appendLogEvent(b []byte, ev *agentapi.Event) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendInt(b, ev.Seq, 10)
	b = append(b, `,"kind":"log","time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","step":`...)
	b = strconv.AppendInt(b, int64(ev.Step), 10)
	if ev.Stream != "" {
		b = append(b, `,"stream":`...)
		b = appendJSONString(b, ev.Stream)
	}
	if ev.Line != "" {
		b = append(b, `,"line":`...)
		b = appendJSONString(b, ev.Line)
	}
	b = append(b, `,"exit_code":0}`...)
	return append(b, '\n')
}

// appendJSONString appends s (valid UTF-8) as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0xe2 && i+2 < len(s) && s[i+1] == 0x80 && (s[i+2] == 0xa8 || s[i+2] == 0xa9) {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[s[i+2]&0xf])
			i += 2
			start = i + 1
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		default: // control characters, and <, >, & as encoding/json escapes them
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
