package fakeforgejo

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/structpb"
)

// APIPrefix is the path under the instance URL where the runner API lives.
const APIPrefix = "/api/actions"

// Header names carrying a runner's credentials.
const (
	HeaderRunnerUUID  = "x-runner-uuid"
	HeaderRunnerToken = "x-runner-token"
)

// runnerKey is the context key of the authenticated runner's uuid.
type runnerKey struct{}

// baseURLKey is the context key of the instance URL derived from the request.
type baseURLKey struct{}

// Handler returns the HTTP handler serving
// /api/actions/runner.v1.RunnerService/* and /api/actions/ping.v1.PingService/*.
func (s *Server) Handler() http.Handler { return s.handler }

// buildHandler mounts both services under APIPrefix.
func (s *Server) buildHandler() http.Handler {
	opts := []connect.HandlerOption{
		connect.WithInterceptors(s.interceptor()),
		// Forgejo gzips responses of 1 KiB or more.
		connect.WithCompressMinBytes(1024),
	}
	mux := http.NewServeMux()
	p, h := runnerv1connect.NewRunnerServiceHandler(rpc{s}, opts...)
	mux.Handle(APIPrefix+p, http.StripPrefix(APIPrefix, h))
	p, h = pingv1connect.NewPingServiceHandler(rpc{s}, opts...)
	mux.Handle(APIPrefix+p, http.StripPrefix(APIPrefix, h))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		ctx := context.WithValue(r.Context(), baseURLKey{}, scheme+"://"+r.Host)
		mux.ServeHTTP(w, r.WithContext(ctx))
	})
}

// interceptor injects faults, answers Declare with Unimplemented under
// NoDeclare and authenticates runners.
func (s *Server) interceptor() connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			proc := req.Spec().Procedure
			name := path.Base(proc)
			s.log.Debug("call", "rpc", name)
			if err := s.takeFault(name); err != nil {
				s.log.Debug("injected error", "rpc", name, "err", err)
				return nil, err
			}
			switch proc {
			case runnerv1connect.RunnerServiceRegisterProcedure, pingv1connect.PingServicePingProcedure:
				return next(ctx, req)
			case runnerv1connect.RunnerServiceDeclareProcedure:
				if s.opts.NoDeclare {
					return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%s is not implemented", proc))
				}
			}
			id, err := s.authenticate(req.Header())
			if err != nil {
				s.log.Debug("unauthenticated call", "rpc", name, "err", err)
				return nil, err
			}
			return next(context.WithValue(ctx, runnerKey{}, id), req)
		}
	}
}

// authenticate checks the runner headers and records the runner as online.
func (s *Server) authenticate(h http.Header) (string, error) {
	unregistered := connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner"))
	id, token := h.Get(HeaderRunnerUUID), h.Get(HeaderRunnerToken)
	if id == "" || token == "" {
		return "", unregistered
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runners[id]
	if !ok || subtle.ConstantTimeCompare([]byte(r.Token), []byte(token)) != 1 {
		return "", unregistered
	}
	r.LastOnline = time.Now()
	return id, nil
}

// rpc implements the generated handler interfaces.
type rpc struct{ s *Server }

var (
	_ runnerv1connect.RunnerServiceHandler = rpc{}
	_ pingv1connect.PingServiceHandler     = rpc{}
)

// Ping answers "Hello, <data>!".
func (h rpc) Ping(_ context.Context, req *connect.Request[pingv1.PingRequest]) (*connect.Response[pingv1.PingResponse], error) {
	return connect.NewResponse(&pingv1.PingResponse{Data: "Hello, " + req.Msg.GetData() + "!"}), nil
}

// Register creates a runner when the registration token is right.
func (h rpc) Register(_ context.Context, req *connect.Request[runnerv1.RegisterRequest]) (*connect.Response[runnerv1.RegisterResponse], error) {
	s, m := h.s, req.Msg
	if subtle.ConstantTimeCompare([]byte(m.GetToken()), []byte(s.opts.RegistrationToken)) != 1 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("runner registration token not found"))
	}
	labels := slices.Clone(m.GetLabels())
	if len(labels) == 0 {
		labels = append(slices.Clone(m.GetAgentLabels()), m.GetCustomLabels()...) //nolint:staticcheck // deprecated fields still sent by old runners
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextRunnerID++
	r := &runnerRec{RunnerView{
		ID:         s.nextRunnerID,
		UUID:       uuid.NewString(),
		Token:      randomHex(20),
		Name:       m.GetName(),
		Labels:     labels,
		Version:    m.GetVersion(),
		Ephemeral:  m.GetEphemeral(),
		LastOnline: time.Now(),
	}}
	s.runners[r.UUID] = r
	s.log.Debug("runner registered", "id", r.ID, "uuid", r.UUID, "name", r.Name, "labels", labels)
	s.notifyLocked()
	return connect.NewResponse(&runnerv1.RegisterResponse{Runner: r.proto(true)}), nil
}

// Declare overwrites the runner's labels and version.
func (h rpc) Declare(ctx context.Context, req *connect.Request[runnerv1.DeclareRequest]) (*connect.Response[runnerv1.DeclareResponse], error) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.runnerLocked(ctx)
	if err != nil {
		return nil, err
	}
	r.Labels = slices.Clone(req.Msg.GetLabels())
	r.Version = req.Msg.GetVersion()
	r.Declared = true
	s.log.Debug("runner declared", "uuid", r.UUID, "version", r.Version, "labels", r.Labels)
	s.notifyLocked()
	return connect.NewResponse(&runnerv1.DeclareResponse{Runner: r.proto(false)}), nil
}

// FetchTask hands out the oldest matching waiting job, unless the runner
// already knows the current tasks_version.
func (h rpc) FetchTask(ctx context.Context, req *connect.Request[runnerv1.FetchTaskRequest]) (*connect.Response[runnerv1.FetchTaskResponse], error) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.runnerLocked(ctx)
	if err != nil {
		return nil, err
	}
	latest := s.tasksVersion
	resp := &runnerv1.FetchTaskResponse{TasksVersion: latest}
	if v := req.Msg.GetTasksVersion(); v != 0 && v == latest {
		return connect.NewResponse(resp), nil
	}
	var pick *taskRec
	for _, t := range s.tasks {
		if t.picked || t.status != runnerv1.Result_RESULT_UNSPECIFIED || !matchLabels(t.runsOn, r.Labels) {
			continue
		}
		if pick == nil || t.id < pick.id {
			pick = t
		}
	}
	if pick == nil {
		return connect.NewResponse(resp), nil
	}

	serverURL := s.opts.ServerURL
	if serverURL == "" {
		serverURL, _ = ctx.Value(baseURLKey{}).(string)
	}
	serverURL = strings.TrimSuffix(serverURL, "/")
	c := defaultContext(serverURL, pick.jobID, pick.id, pick.token)
	c["sha"] = pick.sha
	maps.Copy(c, pick.context)
	st, err := structpb.NewStruct(c)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("build task context: %w", err))
	}
	needs := make(map[string]*runnerv1.TaskNeed, len(pick.needs))
	for k, n := range pick.needs {
		needs[k] = &runnerv1.TaskNeed{Outputs: maps.Clone(n.Outputs), Result: n.Result}
	}

	now := time.Now()
	pick.picked = true
	pick.runner = r.UUID
	pick.started = now
	pick.lastUpd = now
	resp.Task = &runnerv1.Task{
		Id:              pick.id,
		WorkflowPayload: slices.Clone(pick.payload),
		Context:         st,
		Secrets:         maps.Clone(pick.secrets),
		Vars:            maps.Clone(pick.vars),
		Needs:           needs,
	}
	s.log.Debug("task picked", "task", pick.id, "runner", r.UUID)
	s.notifyLocked()
	return connect.NewResponse(resp), nil
}

// UpdateTask records step states, outputs and a final result.
func (h rpc) UpdateTask(ctx context.Context, req *connect.Request[runnerv1.UpdateTaskRequest]) (*connect.Response[runnerv1.UpdateTaskResponse], error) {
	s := h.s
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	state := req.Msg.GetState()
	t, err := s.taskOfRunnerLocked(ctx, state.GetId())
	if err != nil {
		return nil, err
	}
	t.calls["UpdateTask"]++

	result := state.GetResult()
	if result != runnerv1.Result_RESULT_UNSPECIFIED {
		if t.reported == runnerv1.Result_RESULT_UNSPECIFIED {
			t.reported = result
		}
		if !t.archived {
			t.rba = true
		}
	}
	if t.status == runnerv1.Result_RESULT_UNSPECIFIED {
		t.lastUpd = now
		for _, ss := range state.GetSteps() {
			i := ss.GetId()
			if i < 0 || i >= int64(len(t.steps)) {
				t.stepErrs++
				s.log.Warn("step state with an id that is not a step index", "task", t.id, "step_id", i, "steps", len(t.steps))
				continue
			}
			sv := &t.steps[i]
			sv.Reported = true
			sv.Result = ss.GetResult()
			if ss.GetStartedAt() != nil {
				sv.Started = ss.GetStartedAt().AsTime()
			}
			if ss.GetStoppedAt() != nil {
				sv.Stopped = ss.GetStoppedAt().AsTime()
			}
			sv.LogIndex = ss.GetLogIndex()
			sv.LogLength = ss.GetLogLength()
		}
		if result != runnerv1.Result_RESULT_UNSPECIFIED {
			t.status = result
			t.finalAt = now
			t.stopped = now
			if state.GetStoppedAt() != nil {
				t.stopped = state.GetStoppedAt().AsTime()
			}
			s.log.Debug("task finished", "task", t.id, "result", result)
		}
	}
	// Like the real server, outputs are stored even when the task is done.
	for k, v := range req.Msg.GetOutputs() {
		if len(k) > MaxOutputKeyLen {
			s.log.Warn("ignoring output with a too long key", "task", t.id, "key_len", len(k))
			continue
		}
		if len(v) > MaxOutputValueLen {
			s.log.Warn("ignoring output with a too long value", "task", t.id, "key", k, "value_len", len(v))
			continue
		}
		if _, ok := t.outputs[k]; !ok {
			t.outputs[k] = v
		}
	}
	sent := slices.Sorted(maps.Keys(t.outputs))
	s.notifyLocked()
	return connect.NewResponse(&runnerv1.UpdateTaskResponse{
		State:       &runnerv1.TaskState{Id: state.GetId(), Result: t.status},
		SentOutputs: sent,
	}), nil
}

// UpdateLog appends log rows and archives the log on no_more.
func (h rpc) UpdateLog(ctx context.Context, req *connect.Request[runnerv1.UpdateLogRequest]) (*connect.Response[runnerv1.UpdateLogResponse], error) {
	s, m := h.s, req.Msg
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.taskOfRunnerLocked(ctx, m.GetTaskId())
	if err != nil {
		return nil, err
	}
	t.calls["UpdateLog"]++
	defer s.notifyLocked()

	ack := int64(len(t.rows))
	rows, index := m.GetRows(), m.GetIndex()
	if len(rows) == 0 || index > ack || index+int64(len(rows)) <= ack {
		// Nothing to append. Old servers ignore no_more here (the bug).
		if m.GetNoMore() && s.opts.FixedEmptyNoMore && index <= ack && !t.archived {
			t.archived = true
			s.log.Debug("log archived without new rows", "task", t.id, "rows", ack)
		}
		return connect.NewResponse(&runnerv1.UpdateLogResponse{AckIndex: ack}), nil
	}
	if t.archived {
		return nil, connect.NewError(connect.CodeAlreadyExists, errors.New("log file has been archived"))
	}
	for _, r := range rows[ack-index:] {
		c := strings.ReplaceAll(r.GetContent(), "\n", `\n`)
		if len(c) > MaxLogRowSize {
			c = c[:MaxLogRowSize]
		}
		var ts time.Time
		if r.GetTime() != nil {
			ts = r.GetTime().AsTime()
		}
		t.rows = append(t.rows, Row{Time: ts, Content: c, Received: now})
	}
	if m.GetNoMore() {
		t.archived = true
		s.log.Debug("log archived", "task", t.id, "rows", len(t.rows))
	}
	return connect.NewResponse(&runnerv1.UpdateLogResponse{AckIndex: int64(len(t.rows))}), nil
}

// runnerLocked returns the authenticated runner of ctx. s.mu must be held.
func (s *Server) runnerLocked(ctx context.Context) (*runnerRec, error) {
	id, _ := ctx.Value(runnerKey{}).(string)
	r, ok := s.runners[id]
	if !ok {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner"))
	}
	return r, nil
}

// taskOfRunnerLocked returns a task fetched by the authenticated runner of ctx.
// s.mu must be held.
func (s *Server) taskOfRunnerLocked(ctx context.Context, taskID int64) (*taskRec, error) {
	r, err := s.runnerLocked(ctx)
	if err != nil {
		return nil, err
	}
	t, ok := s.tasks[taskID]
	if !ok || !t.picked || t.runner != r.UUID {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("task %d not found", taskID))
	}
	return t, nil
}

// proto converts the runner to its wire form.
func (r *runnerRec) proto(withToken bool) *runnerv1.Runner {
	p := &runnerv1.Runner{
		Id:        r.ID,
		Uuid:      r.UUID,
		Name:      r.Name,
		Version:   r.Version,
		Labels:    slices.Clone(r.Labels),
		Ephemeral: r.Ephemeral,
	}
	if withToken {
		p.Token = r.Token
	}
	return p
}
