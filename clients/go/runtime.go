// Package hevlayer is the Go client of the Layer gateway, generated from the gateway's openapi.yaml
// (client_gen.go, models_gen.go). This file is the hand-written runtime under it: requests, perf, typed errors,
// header copies and the fall-through to Turbopuffer, with the same rules as the Python and TypeScript clients.
package hevlayer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	DefaultBaseURL        = "https://aws-us-east-1.hevlayer.com"
	DefaultTurbopufferURL = "https://aws-us-east-1.turbopuffer.com"
	TurbopufferDirect     = "turbopuffer_direct"
	stamp                 = "_hevlayer_upserted_at"
	maxTags               = 32
	maxTagBytes           = 128
)

var simpleVectorKeys = map[string]bool{"vector": true, "top_k": true, "filters": true, "include_attributes": true}

// Client calls the gateway. Create it with NewClient.
type Client struct {
	baseURL    string
	apiKey     string
	httpClient *http.Client
	fallback   bool
	tpufKey    string
	tpufURL    string
	logf       func(format string, args ...interface{})
}

// Option configures a Client.
type Option func(*Client)

// NewClient returns a client for the gateway; the Turbopuffer fall-through key and URL default to
// TURBOPUFFER_API_KEY and TURBOPUFFER_API_URL.
func NewClient(options ...Option) *Client {
	c := &Client{
		baseURL:    DefaultBaseURL,
		httpClient: &http.Client{Timeout: 30 * time.Second},
		fallback:   true,
		tpufKey:    strings.TrimSpace(os.Getenv("TURBOPUFFER_API_KEY")),
		tpufURL:    strings.TrimRight(strings.TrimSpace(os.Getenv("TURBOPUFFER_API_URL")), "/"),
		logf:       log.Printf,
	}
	if c.tpufURL == "" {
		c.tpufURL = DefaultTurbopufferURL
	}
	for _, option := range options {
		option(c)
	}
	return c
}

// WithBaseURL sets the gateway URL (e.g. os.Getenv("LAYER_GATEWAY_URL")).
func WithBaseURL(baseURL string) Option {
	return func(c *Client) {
		if u := strings.TrimSpace(baseURL); u != "" {
			c.baseURL = strings.TrimRight(u, "/")
		}
	}
}

// WithAPIKey sets the bearer for the gateway: the store key or a minted hvl_ key.
func WithAPIKey(apiKey string) Option {
	return func(c *Client) { c.apiKey = strings.TrimSpace(apiKey) }
}

// WithHTTPClient replaces the default client (30 s timeout).
func WithHTTPClient(httpClient *http.Client) Option {
	return func(c *Client) {
		if httpClient != nil {
			c.httpClient = httpClient
		}
	}
}

// WithFallbackToTurbopuffer(false) disables the fall-through to Turbopuffer (on by default).
func WithFallbackToTurbopuffer(enabled bool) Option {
	return func(c *Client) { c.fallback = enabled }
}

// WithTurbopufferAPIKey sets the key for the fall-through; without one nothing falls through.
func WithTurbopufferAPIKey(key string) Option {
	return func(c *Client) { c.tpufKey = strings.TrimSpace(key) }
}

// WithTurbopufferAPIURL sets where the fall-through goes.
func WithTurbopufferAPIURL(u string) Option {
	return func(c *Client) {
		if u = strings.TrimSpace(u); u != "" {
			c.tpufURL = strings.TrimRight(u, "/")
		}
	}
}

// WithLogger replaces log.Printf for the one warning each fall-through logs.
func WithLogger(logf func(format string, args ...interface{})) Option {
	return func(c *Client) {
		if logf != nil {
			c.logf = logf
		}
	}
}

// LayerPerf describes one call: client-measured latency (the whole call, a fall-through included), the raw
// x-layer-cache header, and Fallback = "turbopuffer_direct" when the call went to Turbopuffer directly.
type LayerPerf struct {
	LatencyMS   float64 `json:"latency_ms"`
	CacheStatus *string `json:"cache_status"`
	Fallback    *string `json:"fallback"`
}

// LayerResponse is what the XxxWithPerf methods return.
type LayerResponse[T any] struct {
	Data T         `json:"data"`
	Perf LayerPerf `json:"perf"`
}

// HevlayerError is an error answer: the status and, from the JSON body, error, message and feature.
type HevlayerError struct {
	StatusCode int
	Kind       string
	Message    string
	Feature    string
	Body       []byte
}

func (e *HevlayerError) Error() string {
	return fmt.Sprintf("hevlayer: status %d: %s", e.StatusCode, e.Message)
}

// ErrGatewayUnreachable matches (errors.Is) every GatewayUnreachableError.
var ErrGatewayUnreachable = errors.New("hevlayer: gateway unreachable")

// GatewayUnreachableError: connecting to the gateway failed and the call could not fall through (Reason says why).
type GatewayUnreachableError struct {
	Operation string
	Reason    string
	Err       error
}

func (e *GatewayUnreachableError) Error() string {
	return fmt.Sprintf("hevlayer: cannot reach the gateway (%v); %s cannot fall through: %s", e.Err, e.Operation, e.Reason)
}

func (e *GatewayUnreachableError) Unwrap() error        { return e.Err }
func (e *GatewayUnreachableError) Is(target error) bool { return target == ErrGatewayUnreachable }

type operation struct {
	name, method, path, fallback string
	upstreamMethod, upstreamPath string
	response                     string
	fixedQuery                   [][2]string
	// read: a read-only route. net/http may then resend it on a fresh connection when a pooled one turns out to
	// be dead (the gateway was killed), and that fresh dial's failure is what lets the call fall through. Writes
	// are never resent: they fail instead.
	read bool
}

type call struct {
	op       *operation
	pathArgs []string
	values   url.Values
	headers  http.Header
	body     interface{}
	err      error
}

func newCall(op *operation, pathArgs ...string) *call {
	c := &call{op: op, pathArgs: pathArgs, values: url.Values{}, headers: http.Header{}}
	for _, kv := range op.fixedQuery {
		c.values.Add(kv[0], kv[1])
	}
	return c
}

// wire renders a parameter value; ok is false for an absent (nil) one.
func wire(v interface{}) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case *string:
		if x == nil {
			return "", false
		}
		return *x, true
	case *int64:
		if x == nil {
			return "", false
		}
		return strconv.FormatInt(*x, 10), true
	case *bool:
		if x == nil {
			return "", false
		}
		return strconv.FormatBool(*x), true
	case []string:
		if x == nil {
			return "", false
		}
		return strings.Join(x, ","), true
	}
	return fmt.Sprint(v), true
}

func (c *call) query(name string, v interface{}) {
	if s, ok := wire(v); ok {
		c.values.Set(name, s)
	}
}

func (c *call) header(name string, v interface{}) {
	if name == "x-hevlayer-tags" {
		if tags, ok := v.([]string); ok && tags != nil {
			clean, err := cleanTags(tags)
			if err != nil {
				c.err = err
			} else if clean != "" {
				c.headers.Set(name, clean)
			}
		}
		return
	}
	if s, ok := wire(v); ok && strings.TrimSpace(s) != "" {
		c.headers.Set(name, strings.TrimSpace(s))
	}
}

func cleanTags(tags []string) (string, error) {
	seen := map[string]bool{}
	for _, raw := range tags {
		tag := strings.TrimSpace(raw)
		if tag == "" {
			continue
		}
		if len(tag) > maxTagBytes {
			return "", fmt.Errorf("hevlayer: search-history tag %q exceeds %d bytes", tag, maxTagBytes)
		}
		for _, r := range tag {
			if !(r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":_-.=/+", r))) {
				return "", fmt.Errorf("hevlayer: search-history tag %q may contain only ASCII letters, digits and :_-.=/+", tag)
			}
		}
		seen[tag] = true
	}
	if len(seen) > maxTags {
		return "", fmt.Errorf("hevlayer: search-history tags are limited to %d unique tags", maxTags)
	}
	out := make([]string, 0, len(seen))
	for tag := range seen {
		out = append(out, tag)
	}
	sort.Strings(out)
	return strings.Join(out, ","), nil
}

// fillPath puts each argument, percent-encoded as one path segment, into the template.
func fillPath(template string, args []string) string {
	var b strings.Builder
	i := 0
	for {
		open := strings.IndexByte(template, '{')
		if open < 0 {
			b.WriteString(template)
			return b.String()
		}
		end := strings.IndexByte(template[open:], '}') + open
		b.WriteString(template[:open])
		b.WriteString(url.PathEscape(args[i]))
		i++
		template = template[end+1:]
	}
}

// simpleVector translates a Layer query Turbopuffer can answer directly, or says why it cannot.
func simpleVector(body map[string]interface{}) (map[string]interface{}, string) {
	vector, ok := body["vector"].([]interface{})
	if !ok || len(vector) == 0 {
		return nil, "the query has no `vector`, so it needs Layer state"
	}
	var extra []string
	for k, v := range body {
		if !simpleVectorKeys[k] && v != nil && v != false {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Sprintf("the query uses %s, which needs Layer state", strings.Join(extra, ", "))
	}
	topK := body["top_k"]
	if n, ok := topK.(float64); !ok || n == 0 {
		topK = 10
	}
	out := map[string]interface{}{"rank_by": []interface{}{"vector", "ANN", vector}, "top_k": topK}
	if f, ok := body["filters"]; ok && f != nil {
		out["filters"] = f
	}
	switch include := body["include_attributes"]; include {
	case nil:
	case true:
		out["exclude_attributes"] = []string{stamp}
	default:
		out["include_attributes"] = include
	}
	return out, ""
}

// isConnectFailure: the request never left (refused, DNS, dial timeout), so it can be sent elsewhere.
func isConnectFailure(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

func (c *Client) fallThrough(req *call, payload []byte, cause error) (string, string, []byte, error) {
	op := req.op
	reason := ""
	switch {
	case !c.fallback:
		reason = "fall-through to Turbopuffer is disabled (WithFallbackToTurbopuffer(false))"
	case op.fallback == "none" || op.upstreamPath == "":
		reason = op.name + " is a Layer-only call"
	case c.tpufKey == "":
		reason = "no Turbopuffer key (TURBOPUFFER_API_KEY) to fall through with"
	case op.fallback == "simple-vector":
		var body map[string]interface{}
		if err := json.Unmarshal(payload, &body); err != nil {
			reason = "the query is not a JSON object"
			break
		}
		translated, why := simpleVector(body)
		if why != "" {
			reason = why
			break
		}
		payload, _ = json.Marshal(translated)
	}
	if reason != "" {
		return "", "", nil, &GatewayUnreachableError{Operation: op.name, Reason: reason, Err: cause}
	}
	method := op.upstreamMethod
	if method == "" {
		method = op.method
	}
	c.logf("hevlayer: gateway unreachable (%v); sending %s directly to Turbopuffer at %s", cause, op.name, c.tpufURL)
	return method, c.tpufURL + fillPath(op.upstreamPath, req.pathArgs), payload, nil
}

func (c *Client) send(ctx context.Context, method, target, key string, payload []byte, headers http.Header, read bool) (*http.Response, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	httpReq, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return nil, err
	}
	for name, values := range headers {
		httpReq.Header[name] = values
	}
	if payload != nil {
		httpReq.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		httpReq.Header.Set("Authorization", "Bearer "+key)
	}
	if read {
		httpReq.Header["Idempotency-Key"] = nil // marks the request replayable; a nil value is never sent
	}
	return c.httpClient.Do(httpReq)
}

// do sends the call (falling through when connecting failed and the rules allow it) and decodes the answer.
func (c *Client) do(ctx context.Context, req *call, out interface{}) (http.Header, LayerPerf, error) {
	var perf LayerPerf
	if req.err != nil {
		return nil, perf, req.err
	}
	var payload []byte
	if req.body != nil {
		var err error
		if payload, err = json.Marshal(req.body); err != nil {
			return nil, perf, err
		}
	}
	suffix := ""
	if encoded := req.values.Encode(); encoded != "" {
		suffix = "?" + encoded
	}
	started := time.Now()
	resp, err := c.send(ctx, req.op.method, c.baseURL+fillPath(req.op.path, req.pathArgs)+suffix, c.apiKey, payload, req.headers,
		req.op.read)
	if err != nil {
		if !isConnectFailure(err) {
			return nil, perf, err
		}
		method, target, direct, ferr := c.fallThrough(req, payload, err)
		if ferr != nil {
			return nil, perf, ferr
		}
		if resp, err = c.send(ctx, method, target+suffix, c.tpufKey, direct, nil, req.op.read); err != nil {
			return nil, perf, err
		}
		fallback := TurbopufferDirect
		perf.Fallback = &fallback
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, perf, err
	}
	perf.LatencyMS = float64(time.Since(started).Microseconds()) / 1000
	if cache := resp.Header.Get("x-layer-cache"); cache != "" {
		perf.CacheStatus = &cache
	}
	if resp.StatusCode >= 400 {
		return nil, perf, errorFrom(resp, raw)
	}
	if req.op.response == "text" {
		if s, ok := out.(*string); ok {
			*s = string(raw)
		}
	} else if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, perf, fmt.Errorf("hevlayer: %s: cannot decode the answer: %w", req.op.name, err)
		}
	}
	return resp.Header, perf, nil
}

func errorFrom(resp *http.Response, raw []byte) error {
	e := &HevlayerError{StatusCode: resp.StatusCode, Body: raw, Message: strings.TrimSpace(string(raw))}
	var body map[string]interface{}
	if json.Unmarshal(raw, &body) == nil {
		if kind, ok := body["error"].(string); ok {
			e.Kind = kind
			e.Message = kind
		}
		if msg, ok := body["message"].(string); ok && msg != "" {
			e.Message = msg
		}
		if feature, ok := body["feature"].(string); ok {
			e.Feature = feature
		}
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

func headerInt(h http.Header, name string) (int64, bool) {
	n, err := strconv.ParseInt(h.Get(name), 10, 64)
	return n, err == nil
}

func headerString(h http.Header, name string) (string, bool) {
	v := h.Get(name)
	return v, v != ""
}
