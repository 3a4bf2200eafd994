// Package probeclient is what a sandbox "container" runs instead of an image: it reads the
// container's command, args and environment and does what an Azure client would do with them,
// against IMDS at 169.254.169.254 (inside a pod's network namespace that is NMI, through its
// iptables DNAT). It never prints a token: each outcome is one result line (identity, audience,
// expiry, status) that the node agent turns into a pod Event, and the exit code is the
// container's.
//
// Understood commands (also inside `sh -c "a && b; c"`):
//
//	az login --identity|-i [-u|--username <clientID|resourceID>]   token for ARM
//	az account get-access-token [--resource <uri>]                 token for <uri> (default ARM)
//	curl [-s] [-f] [-H 'Metadata: true'] <url>                     one GET; -f: exit 22 on >= 400
//	sleep <seconds|infinity>
//	true | false | exit <n>
//	anything else (or no command): an application using an Azure SDK — one token for ARM,
//	    then stays running and refreshes the token every --period until stopped.
//
// AZURE_CLIENT_ID in the environment selects the identity when the command names none, as the
// Azure SDKs' environment credential does.
package probeclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// ARMResource is the audience `az login` and SDK defaults ask for.
const ARMResource = "https://management.azure.com/"

// ResultPrefix starts every result line on stdout.
const ResultPrefix = "PROBE-RESULT "

// Options configure the client.
type Options struct {
	// Endpoint is IMDS's base URL.
	Endpoint string
	// Retries is how many times a retriable answer is retried (Azure SDKs: 5).
	Retries int
	// RetryDelay is the first backoff; it doubles up to RetryMaxDelay. Retry-After wins when sent.
	RetryDelay, RetryMaxDelay time.Duration
	// Period is how often an application container refreshes its token.
	Period time.Duration
	// RequestTimeout bounds one HTTP request (NMI may hold a request while MIC assigns).
	RequestTimeout time.Duration
}

// AddFlags registers the options.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Endpoint, "imds-endpoint", "http://169.254.169.254", "Base URL of the Instance Metadata Service.")
	fs.IntVar(&o.Retries, "retries", 5, "Retries of a retriable IMDS answer (404, 408, 410, 429, 5xx, connection errors), as the Azure SDKs do.")
	fs.DurationVar(&o.RetryDelay, "retry-delay", time.Second, "First retry delay; doubles per retry up to --retry-max-delay. A Retry-After header wins.")
	fs.DurationVar(&o.RetryMaxDelay, "retry-max-delay", 16*time.Second, "Longest delay between retries.")
	fs.DurationVar(&o.Period, "period", 5*time.Minute, "How often a long-running application container refreshes its token.")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", 2*time.Minute, "Timeout of one HTTP request.")
}

// Validate checks the options.
func (o *Options) Validate() error {
	if _, err := url.Parse(o.Endpoint); err != nil || o.Endpoint == "" {
		return fmt.Errorf("--imds-endpoint %q is not a URL: give e.g. http://169.254.169.254", o.Endpoint)
	}
	if o.Retries < 0 || o.RetryDelay <= 0 || o.RetryMaxDelay < o.RetryDelay {
		return fmt.Errorf("retry settings invalid (retries %d, delay %s, max %s): retries >= 0 and 0 < delay <= max", o.Retries, o.RetryDelay, o.RetryMaxDelay)
	}
	if o.Period <= 0 || o.RequestTimeout <= 0 {
		return errors.New("--period and --request-timeout must be positive")
	}
	return nil
}

// Result is one outcome, printed as a result line. It never contains a token.
type Result struct {
	// Kind is "token" or "http".
	Kind string `json:"kind"`
	OK   bool   `json:"ok"`
	// Command is the command that produced this result, as written.
	Command string `json:"command"`
	// Selector is what the request named: "client_id=<id>", "mi_res_id=<id>" or "" (none).
	Selector string `json:"selector,omitempty"`
	// Resource is the requested audience.
	Resource string `json:"resource,omitempty"`
	// Claims of the token received (never the token).
	ClientID  string `json:"clientID,omitempty"`
	AppID     string `json:"appid,omitempty"`
	MIRID     string `json:"xms_mirid,omitempty"`
	Audience  string `json:"aud,omitempty"`
	ExpiresOn int64  `json:"exp,omitempty"`
	// Status is the last HTTP status (0: no answer).
	Status int `json:"status,omitempty"`
	// Error is the error code and description of a failure.
	Error    string `json:"error,omitempty"`
	Attempts int    `json:"attempts"`
	// Tries are the answers of the failed attempts of a token request (the last one too when no
	// token came), so a retry mode such as NMI's --set-retry-after-header can be checked from
	// the outcome.
	Tries []Try `json:"tries,omitempty"`
	// Elapsed is the time from the first request to this result.
	ElapsedMS int64 `json:"elapsedMs"`
	// Time is when the result was produced (RFC 3339).
	Time string `json:"time"`
}

// Try is one failed attempt of a token request.
type Try struct {
	// Status is the HTTP status (0: no answer).
	Status int `json:"status"`
	// RetryAfter is the Retry-After header in seconds (0: none).
	RetryAfter int `json:"retryAfter,omitempty"`
}

// Summary is the one-line human form of a result, used as the Event message.
func (r Result) Summary() string {
	if r.Kind == "http" {
		return fmt.Sprintf("%s -> HTTP %d", r.Command, r.Status)
	}
	if !r.OK {
		return fmt.Sprintf("no token for %s (selector %q) after %d attempts: HTTP %d %s", r.Resource, r.Selector, r.Attempts, r.Status, r.Error)
	}
	return fmt.Sprintf("token for identity %s (aud %s, xms_mirid %s, expires %s) after %d attempts in %dms",
		r.ClientID, r.Audience, r.MIRID, time.Unix(r.ExpiresOn, 0).UTC().Format(time.RFC3339), r.Attempts, r.ElapsedMS)
}

// ParseResultLine returns the result of a line printed by the client, or false.
func ParseResultLine(line string) (Result, bool) {
	rest, ok := strings.CutPrefix(line, ResultPrefix)
	if !ok {
		return Result{}, false
	}
	var r Result
	if err := json.Unmarshal([]byte(rest), &r); err != nil {
		return Result{}, false
	}
	return r, true
}

// Client runs commands.
type Client struct {
	opts   Options
	http   *http.Client
	out    io.Writer
	log    io.Writer
	getenv func(string) string
}

// New returns a client that prints result lines to out and progress to log.
func New(o Options, out, log io.Writer, getenv func(string) string) *Client {
	return &Client{
		opts: o,
		// No redirects: IMDS never sends them, and following one could leave the sandbox's rules.
		http: &http.Client{Timeout: o.RequestTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		out:  out, log: log, getenv: getenv,
	}
}

// ExitError carries a container exit code.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return "exit status " + strconv.Itoa(e.Code) }

// ExitCode maps Run's error to a process exit code.
func ExitCode(err error) int {
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	default:
		return 1
	}
}

// Run runs the container's command line (command followed by args).
func (c *Client) Run(ctx context.Context, argv []string) error {
	if len(argv) >= 3 && isShell(argv[0]) && argv[1] == "-c" {
		return c.runScript(ctx, argv[2])
	}
	return c.runOne(ctx, argv)
}

func isShell(s string) bool {
	switch s {
	case "sh", "/bin/sh", "bash", "/bin/bash":
		return true
	}
	return false
}

// runScript runs a tiny subset of shell: commands joined by "&&" (stop on failure) and ";".
func (c *Client) runScript(ctx context.Context, script string) error {
	var err error
	for _, seq := range strings.Split(script, ";") {
		err = nil
		for _, cmd := range strings.Split(seq, "&&") {
			words, perr := splitWords(cmd)
			if perr != nil {
				return perr
			}
			if len(words) == 0 {
				continue
			}
			if err = c.runOne(ctx, words); err != nil {
				break
			}
		}
	}
	return err
}

// splitWords splits a command into words, honouring single and double quotes.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, &ExitError{Code: 2}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

func (c *Client) runOne(ctx context.Context, argv []string) error {
	if len(argv) == 0 {
		return c.app(ctx, "<image entrypoint>")
	}
	line := strings.Join(argv, " ")
	switch base(argv[0]) {
	case "az":
		return c.az(ctx, line, argv[1:])
	case "curl":
		return c.curl(ctx, line, argv[1:])
	case "sleep":
		return sleep(ctx, argv[1:])
	case "true":
		return nil
	case "false":
		return &ExitError{Code: 1}
	case "exit":
		n := 0
		if len(argv) > 1 {
			n, _ = strconv.Atoi(argv[1])
		}
		if n == 0 {
			return nil
		}
		return &ExitError{Code: n}
	default:
		return c.app(ctx, line)
	}
}

func base(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[i+1:]
	}
	return p
}

func sleep(ctx context.Context, args []string) error {
	var d time.Duration
	if len(args) == 0 || args[0] == "infinity" {
		d = 365 * 24 * time.Hour
	} else if f, err := strconv.ParseFloat(strings.TrimSuffix(args[0], "s"), 64); err == nil {
		d = time.Duration(f * float64(time.Second))
	} else {
		return &ExitError{Code: 1}
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	return nil
}

// selector turns `-u` of az (a client ID or a resource ID) or AZURE_CLIENT_ID into a query.
func (c *Client) selector(user string) (key, val string) {
	if user == "" {
		user = c.getenv("AZURE_CLIENT_ID")
	}
	switch {
	case user == "":
		return "", ""
	case strings.HasPrefix(user, "/"):
		return "mi_res_id", user
	default:
		return "client_id", user
	}
}

func (c *Client) az(ctx context.Context, line string, args []string) error {
	var user, resource string
	identity := false
	var words []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch {
		case a == "--identity" || a == "-i":
			identity = true
		case a == "-u" || a == "--username":
			user = next()
		case strings.HasPrefix(a, "--username="):
			user = strings.TrimPrefix(a, "--username=")
		case a == "--resource":
			resource = next()
		case strings.HasPrefix(a, "--resource="):
			resource = strings.TrimPrefix(a, "--resource=")
		case strings.HasPrefix(a, "-"):
		default:
			words = append(words, a)
		}
	}
	cmd := strings.Join(words, " ")
	switch {
	case cmd == "login" && identity:
		_, err := c.token(ctx, line, user, ARMResource)
		return err
	case cmd == "account get-access-token":
		if resource == "" {
			resource = ARMResource
		}
		_, err := c.token(ctx, line, user, resource)
		return err
	default:
		fmt.Fprintf(c.log, "probe-client: az %s is not emulated: only `az login --identity` and `az account get-access-token`\n", cmd)
		return &ExitError{Code: 2}
	}
}

// app behaves like an application using an Azure SDK: a token at start (failing the container
// when none comes), then a refresh every period until stopped.
func (c *Client) app(ctx context.Context, line string) error {
	if _, err := c.token(ctx, line, "", ARMResource); err != nil {
		return err
	}
	t := time.NewTicker(c.opts.Period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := c.token(ctx, line, "", ARMResource); err != nil {
				return err
			}
		}
	}
}

type imdsToken struct {
	AccessToken string `json:"access_token"`
	ClientID    string `json:"client_id"`
	ExpiresOn   string `json:"expires_on"`
	Resource    string `json:"resource"`
}

type imdsError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func retriable(status int) bool {
	switch status {
	case 0, http.StatusNotFound, http.StatusRequestTimeout, http.StatusGone, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// token requests a token with SDK-like retries and prints the result.
func (c *Client) token(ctx context.Context, line, user, resource string) (Result, error) {
	key, val := c.selector(user)
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {resource}}
	res := Result{Kind: "token", Command: line, Resource: resource}
	if key != "" {
		q.Set(key, val)
		res.Selector = key + "=" + val
	}
	u := strings.TrimRight(c.opts.Endpoint, "/") + "/metadata/identity/oauth2/token?" + q.Encode()
	start := time.Now()
	delay := c.opts.RetryDelay
	for attempt := 1; ; attempt++ {
		res.Attempts = attempt
		status, body, retryAfter, err := c.get(ctx, u, true)
		res.Status = status
		if err == nil && status == http.StatusOK {
			var t imdsToken
			if jerr := json.Unmarshal(body, &t); jerr != nil || t.AccessToken == "" {
				res.Error = "token response unreadable"
			} else {
				res.OK = true
				res.Error = ""
				res.ClientID = t.ClientID
				claims := jwtClaims(t.AccessToken)
				res.AppID, _ = claims["appid"].(string)
				res.MIRID, _ = claims["xms_mirid"].(string)
				res.Audience, _ = claims["aud"].(string)
				if exp, ok := claims["exp"].(float64); ok {
					res.ExpiresOn = int64(exp)
				} else {
					res.ExpiresOn, _ = strconv.ParseInt(t.ExpiresOn, 10, 64)
				}
				if res.ClientID == "" {
					res.ClientID = res.AppID
				}
			}
			break
		}
		if err != nil {
			res.Error = err.Error()
		} else {
			var e imdsError
			_ = json.Unmarshal(body, &e)
			res.Error = strings.TrimSpace(e.Error + ": " + e.Description)
			if e.Error == "" {
				res.Error = strings.TrimSpace(string(truncate(body, 200)))
			}
		}
		fmt.Fprintf(c.log, "probe-client: attempt %d for %s: status %d (Retry-After %s): %s\n", attempt, u, status, retryAfter, res.Error)
		res.Tries = append(res.Tries, Try{Status: status, RetryAfter: int(retryAfter / time.Second)})
		if !retriable(status) || attempt > c.opts.Retries || ctx.Err() != nil {
			break
		}
		wait := delay
		if retryAfter > 0 {
			wait = retryAfter
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		if delay *= 2; delay > c.opts.RetryMaxDelay {
			delay = c.opts.RetryMaxDelay
		}
	}
	res.ElapsedMS = time.Since(start).Milliseconds()
	c.emit(res)
	if !res.OK {
		return res, &ExitError{Code: 1}
	}
	return res, nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// jwtClaims decodes a token's payload without verifying it: the client only reports claims.
func jwtClaims(tok string) map[string]any {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	m := map[string]any{}
	_ = json.Unmarshal(b, &m)
	return m
}

func (c *Client) get(ctx context.Context, u string, metadata bool) (int, []byte, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, 0, err
	}
	if metadata {
		req.Header.Set("Metadata", "true")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var ra time.Duration
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 60 {
			ra = time.Duration(n) * time.Second
		}
	}
	return resp.StatusCode, body, ra, nil
}

func (c *Client) curl(ctx context.Context, line string, args []string) error {
	fail, metadata := false, false
	var target string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-H" || a == "--header":
			if i+1 < len(args) {
				i++
				h := strings.ToLower(strings.ReplaceAll(args[i], " ", ""))
				metadata = metadata || h == "metadata:true"
			}
		case a == "--fail" || (strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && strings.Contains(a, "f")):
			fail = true
		case strings.HasPrefix(a, "-"):
		default:
			target = a
		}
	}
	if target == "" {
		fmt.Fprintln(c.log, "probe-client: curl without a URL")
		return &ExitError{Code: 2}
	}
	start := time.Now()
	status, body, _, err := c.get(ctx, target, metadata)
	res := Result{Kind: "http", Command: line, Status: status, Attempts: 1, OK: err == nil && status < 400, ElapsedMS: time.Since(start).Milliseconds()}
	if err != nil {
		res.Error = err.Error()
	} else if status >= 400 {
		res.Error = strings.TrimSpace(string(truncate(body, 200)))
	}
	c.emit(res)
	switch {
	case err != nil:
		return &ExitError{Code: 7} // curl: failed to connect
	case fail && status >= 400:
		return &ExitError{Code: 22}
	}
	return nil
}

func (c *Client) emit(r Result) {
	r.Time = time.Now().UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(r)
	fmt.Fprintf(c.out, "%s%s\n", ResultPrefix, b)
}
