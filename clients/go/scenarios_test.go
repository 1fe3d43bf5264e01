package hevlayer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The repository's sdk/ folder: the shared scenarios, the recording fake and the live stack.
var sdkDir = filepath.Join("..", "..", "sdk")

func python() string {
	if p := os.Getenv("PYTHON"); p != "" {
		return p
	}
	return "python3"
}

// startHelper runs a Python helper from sdk/ that prints one JSON line and serves until its stdin closes.
func startHelper(t *testing.T, script string, out interface{}) (*exec.Cmd, func(string)) {
	t.Helper()
	cmd := exec.Command(python(), filepath.Join(sdkDir, script))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	if !lines.Scan() {
		t.Fatalf("%s printed nothing: %v", script, lines.Err())
	}
	if err := json.Unmarshal(lines.Bytes(), out); err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	send := func(command string) {
		fmt.Fprintln(stdin, command)
		if !lines.Scan() {
			t.Fatalf("%s did not answer %q", script, command)
		}
	}
	return cmd, send
}

func decodeArg(args map[string]json.RawMessage, name string, into interface{}) error {
	raw, ok := args[name]
	if !ok {
		return nil
	}
	return json.Unmarshal(raw, into)
}

type scenario struct {
	Name           string                     `json:"name"`
	Op             string                     `json:"op"`
	Args           map[string]json.RawMessage `json:"args"`
	WithPerf       bool                       `json:"with_perf"`
	Gateway        string                     `json:"gateway"`
	Fallback       *bool                      `json:"fallback"`
	TurbopufferKey json.RawMessage            `json:"turbopuffer_key"`
	TimeoutMS      int                        `json:"timeout_ms"`
	Serve          json.RawMessage            `json:"serve"`
	Expect         map[string]interface{}     `json:"expect"`
}

func getJSON(t *testing.T, method, url string, body []byte) interface{} {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out interface{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// subset: expected is a subset of actual; expected null means absent or null; "reason" is a substring.
func subset(t *testing.T, where string, expected, actual interface{}) {
	t.Helper()
	switch want := expected.(type) {
	case map[string]interface{}:
		got, ok := actual.(map[string]interface{})
		if !ok {
			t.Fatalf("%s: expected an object, got %#v", where, actual)
		}
		for key, w := range want {
			g, present := got[key]
			switch {
			case key == "reason":
				if s, _ := g.(string); !strings.Contains(s, w.(string)) {
					t.Fatalf("%s.reason: %q not in %q", where, w, s)
				}
			case w == nil:
				if g != nil {
					t.Fatalf("%s.%s: expected absent or null, got %#v", where, key, g)
				}
			case !present:
				t.Fatalf("%s.%s: missing in %#v", where, key, got)
			default:
				subset(t, where+"."+key, w, g)
			}
		}
	case []interface{}:
		got, ok := actual.([]interface{})
		if !ok || len(got) != len(want) {
			t.Fatalf("%s: expected %#v, got %#v", where, want, actual)
		}
		for i := range want {
			subset(t, fmt.Sprintf("%s[%d]", where, i), want[i], got[i])
		}
	default:
		if fmt.Sprint(expected) != fmt.Sprint(actual) {
			t.Fatalf("%s: expected %#v, got %#v", where, expected, actual)
		}
	}
}

func asJSON(t *testing.T, v interface{}) interface{} {
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out interface{}
	json.Unmarshal(raw, &out)
	return out
}

func asError(err error) map[string]interface{} {
	var unreachable *GatewayUnreachableError
	var apiErr *HevlayerError
	var netErr net.Error
	switch {
	case errors.As(err, &unreachable):
		if !errors.Is(err, ErrGatewayUnreachable) {
			return map[string]interface{}{"broken": "errors.Is(ErrGatewayUnreachable) is false"}
		}
		return map[string]interface{}{"unreachable": true, "status": 0.0, "reason": unreachable.Reason}
	case errors.As(err, &apiErr):
		return map[string]interface{}{"status": float64(apiErr.StatusCode), "error": apiErr.Kind, "message": apiErr.Message,
			"feature": apiErr.Feature}
	case errors.As(err, &netErr):
		return map[string]interface{}{"transport": true}
	}
	return map[string]interface{}{"client": true, "message": err.Error()}
}

func TestScenarios(t *testing.T) {
	var doc struct {
		Scenarios []scenario `json:"scenarios"`
	}
	raw, err := os.ReadFile(filepath.Join(sdkDir, "scenarios.json"))
	if err != nil {
		t.Skip("sdk/scenarios.json not found (the client is tested from the Layer repository)")
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var urls map[string]string
	startHelper(t, "fake_layer.py", &urls)
	os.Unsetenv("TURBOPUFFER_API_KEY")
	os.Unsetenv("TURBOPUFFER_API_URL")
	for _, sc := range doc.Scenarios {
		sc := sc
		t.Run(sc.Name, func(t *testing.T) {
			serve := []byte(sc.Serve)
			if len(serve) == 0 || string(serve) == "null" {
				serve = []byte("{}")
			}
			getJSON(t, "POST", urls["gateway"]+"/__arm", serve)
			base := urls["gateway"]
			if sc.Gateway == "down" {
				base = urls["dead"]
			}
			key := "tpuf-key"
			if sc.TurbopufferKey != nil {
				json.Unmarshal(sc.TurbopufferKey, &key)
				if string(sc.TurbopufferKey) == "null" {
					key = ""
				}
			}
			timeout := 10 * time.Second
			if sc.TimeoutMS > 0 {
				timeout = time.Duration(sc.TimeoutMS) * time.Millisecond
			}
			fallback := sc.Fallback == nil || *sc.Fallback
			client := NewClient(WithBaseURL(base), WithAPIKey("gw-key"), WithTurbopufferAPIURL(urls["turbopuffer"]),
				WithTurbopufferAPIKey(key), WithFallbackToTurbopuffer(fallback),
				WithHTTPClient(&http.Client{Timeout: timeout}), WithLogger(t.Logf))
			result, err := dispatch(context.Background(), client, sc.Op, sc.Args, sc.WithPerf)
			if want, ok := sc.Expect["error"]; ok {
				if err == nil {
					t.Fatalf("expected an error, got %#v", result)
				}
				subset(t, "error", want, asJSON(t, asError(err)))
			} else {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				subset(t, "result", sc.Expect["result"], asJSON(t, result))
			}
			subset(t, "requests", sc.Expect["requests"], getJSON(t, "GET", urls["gateway"]+"/__log", nil))
		})
	}
}
