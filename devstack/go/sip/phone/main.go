// Command voicepool-phone is the SIP test phone of the voicepool local stack.
//
// It dials livekit-sip over TCP with G.711 (livekit/sip's pkg/siptest does the SIP and RTP),
// keeps sending audio (silence, or a WAV file on command), records everything it hears, finds
// where the far end starts and stops speaking, sends RFC 4733 keys and answers a REFER with a
// configurable NOTIFY. Tests drive it through stdin (one command a line) and read what
// happened from stdout (one JSON event a line, each stamped with milliseconds since start),
// so every figure it reports is taken from the RTP it actually sends and receives.
//
// Commands: "play <file.wav>", "dtmf <digits>", "notify <sipfrag>|none", "hangup".
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	msdk "github.com/livekit/media-sdk"
	"github.com/livekit/media-sdk/dtmf"
	"github.com/livekit/media-sdk/g711"
	"github.com/livekit/media-sdk/mixer"
	"github.com/livekit/media-sdk/rtp"
	"github.com/livekit/sipgo/sip"

	"github.com/livekit/sip/pkg/siptest"
)

const (
	sampleRate = 8000
	frameLen   = sampleRate / 50 // 20 ms of G.711
	// A received 20 ms frame louder than this (RMS of 16-bit PCM) counts as voice.
	defaultLoud = 500.0
)

var start = time.Now()

// events writes one JSON object a line to stdout; safe from every goroutine.
type events struct {
	mu  sync.Mutex
	out *bufio.Writer
}

func (e *events) emit(kind string, fields map[string]any) {
	obj := map[string]any{"ev": kind, "t": ms(time.Now())}
	for k, v := range fields {
		obj[k] = v
	}
	raw, _ := json.Marshal(obj)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.out.Write(raw)
	e.out.WriteByte('\n')
	e.out.Flush()
}

func ms(t time.Time) float64 { return float64(t.Sub(start).Microseconds()) / 1000 }

// privateField reaches a field siptest does not export (the recorder hook and the audio
// mixer). The module pins siptest at one version, so the layout cannot move under us.
func privateField[T any](cli *siptest.Client, name string) *T {
	f := reflect.ValueOf(cli).Elem().FieldByName(name)
	if !f.IsValid() {
		panic("siptest.Client has no field " + name + " (livekit/sip version changed?)")
	}
	return (*T)(unsafe.Pointer(f.UnsafeAddr()))
}

// sentTap sits between the phone's mixer and its RTP encoder: each 20 ms frame it passes on
// is encoded and sent as one RTP packet at once, so the time it sees a loud frame is the time
// that voice left the phone -- where an honest time to first word starts. (The mixer keeps
// 3-5 frames per input buffered, so stamping the frames as the WAV is written into it would
// start the clock 60-100 ms early.)
type sentTap struct {
	msdk.Writer[msdk.PCM16Sample]
	loud     float64
	lastLoud atomic.Int64 // ns since start; 0 = nothing loud sent yet
}

func (t *sentTap) WriteSample(s msdk.PCM16Sample) error {
	err := t.Writer.WriteSample(s)
	if rmsOf(s) >= t.loud {
		t.lastLoud.Store(int64(time.Since(start)))
	}
	return err
}

func rmsOf(pcm []int16) float64 {
	var sum float64
	for _, s := range pcm {
		sum += float64(s) * float64(s)
	}
	return math.Sqrt(sum / float64(max(len(pcm), 1)))
}

// listener segments what the phone hears into voice/silence and records it as PCM.
type listener struct {
	ev      *events
	loud    float64
	hang    time.Duration
	mu      sync.Mutex
	pcm     []int16
	voicing bool
	lastHot time.Time
	frames  atomic.Int64
}

func (l *listener) HandleRTP(h *rtp.Header, payload []byte) error {
	if h.PayloadType != 0 { // PCMU only; RFC 4733 goes to OnDTMF
		return nil
	}
	pcm := g711.ULawSample(payload).Decode()
	rms := rmsOf(pcm)
	now := time.Now()
	l.frames.Add(1)
	l.mu.Lock()
	l.pcm = append(l.pcm, pcm...)
	hot := rms >= l.loud
	if hot {
		l.lastHot = now
		if !l.voicing {
			l.voicing = true
			l.mu.Unlock()
			l.ev.emit("voice_start", map[string]any{"rms": math.Round(rms)})
			return nil
		}
	}
	l.mu.Unlock()
	return nil
}

func (l *listener) Close() {}

func (l *listener) String() string { return "voicepool-phone listener" }

// watch closes voice segments after “hang“ of quiet and reports the last loud frame's time.
func (l *listener) watch(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		ended := l.voicing && time.Since(l.lastHot) > l.hang
		last := l.lastHot
		if ended {
			l.voicing = false
		}
		l.mu.Unlock()
		if ended {
			l.ev.emit("voice_end", map[string]any{"last_loud": ms(last)})
		}
	}
}

func (l *listener) save(path string) error {
	l.mu.Lock()
	pcm := append([]int16(nil), l.pcm...)
	l.mu.Unlock()
	return writeWAV(path, pcm)
}

func writeWAV(path string, pcm []int16) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	size := uint32(len(pcm) * 2)
	hdr := []any{
		[4]byte{'R', 'I', 'F', 'F'}, 36 + size, [4]byte{'W', 'A', 'V', 'E'},
		[4]byte{'f', 'm', 't', ' '}, uint32(16), uint16(1), uint16(1),
		uint32(sampleRate), uint32(sampleRate * 2), uint16(2), uint16(16),
		[4]byte{'d', 'a', 't', 'a'}, size,
	}
	for _, v := range hdr {
		if err := binary.Write(f, binary.LittleEndian, v); err != nil {
			return err
		}
	}
	return binary.Write(f, binary.LittleEndian, pcm)
}

// readWAV loads a mono 16-bit 8 kHz PCM WAV (the test synthesises and resamples it).
func readWAV(path string) ([]int16, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw) < 12 || string(raw[:4]) != "RIFF" || string(raw[8:12]) != "WAVE" {
		return nil, errors.New("not a RIFF/WAVE file")
	}
	var rate uint32
	var channels, bits uint16
	for off := 12; off+8 <= len(raw); {
		id, n := string(raw[off:off+4]), int(binary.LittleEndian.Uint32(raw[off+4:]))
		body := raw[off+8 : min(off+8+n, len(raw))]
		switch id {
		case "fmt ":
			if len(body) < 16 {
				return nil, errors.New("short fmt chunk")
			}
			channels = binary.LittleEndian.Uint16(body[2:])
			rate = binary.LittleEndian.Uint32(body[4:])
			bits = binary.LittleEndian.Uint16(body[14:])
		case "data":
			if rate != sampleRate || channels != 1 || bits != 16 {
				return nil, fmt.Errorf("need mono 16-bit %d Hz PCM, got %d ch %d-bit %d Hz",
					sampleRate, channels, bits, rate)
			}
			pcm := make([]int16, len(body)/2)
			for i := range pcm {
				pcm[i] = int16(binary.LittleEndian.Uint16(body[2*i:]))
			}
			return pcm, nil
		}
		off += 8 + n + n%2
	}
	return nil, errors.New("no data chunk")
}

// lastVoiced is the index just past the last 20 ms frame louder than “loud“.
func lastVoiced(pcm []int16, loud float64) int {
	end := 0
	for i := 0; i+frameLen <= len(pcm); i += frameLen {
		var sum float64
		for _, s := range pcm[i : i+frameLen] {
			sum += float64(s) * float64(s)
		}
		if math.Sqrt(sum/frameLen) >= loud {
			end = i + frameLen
		}
	}
	return end
}

type phone struct {
	cli    *siptest.Client
	ev     *events
	out    *mixer.Mixer
	sent   *sentTap
	loud   float64
	notify atomic.Pointer[string]
	playMu sync.Mutex
}

// play paces the file into the mixer at real time and reports when the last voiced frame
// went out: the caller's true end of voicing, where a time to first word starts.
func (p *phone) play(path string) {
	pcm, err := readWAV(path)
	if err != nil {
		p.ev.emit("error", map[string]any{"cmd": "play", "error": err.Error()})
		return
	}
	p.playMu.Lock()
	defer p.playMu.Unlock()
	voicedEnd := lastVoiced(pcm, p.loud)
	in := p.out.NewInput()
	defer p.out.RemoveInput(in)
	p.ev.emit("play_start", map[string]any{"file": path, "seconds": float64(len(pcm)) / sampleRate})
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var voiceEnd time.Time
	for i := 0; i < len(pcm); i += frameLen {
		<-tick.C
		frame := make([]int16, frameLen)
		copy(frame, pcm[i:min(i+frameLen, len(pcm))])
		if err := in.WriteSample(frame); err != nil {
			p.ev.emit("error", map[string]any{"cmd": "play", "error": err.Error()})
			return
		}
		if i < voicedEnd {
			voiceEnd = time.Now().Add(20 * time.Millisecond)
		}
	}
	// the mixer still holds the last few frames: wait until they are sent, then report the
	// RTP send time of the last loud one (and, for comparison, when it went into the mixer)
	time.Sleep(time.Duration(mixer.DefaultInputBufferFrames+2) * 20 * time.Millisecond)
	sentEnd := voiceEnd
	if ns := p.sent.lastLoud.Load(); ns > 0 {
		sentEnd = start.Add(time.Duration(ns))
	}
	p.ev.emit("play_end", map[string]any{"voice_end": ms(sentEnd), "voice_end_written": ms(voiceEnd)})
}

func (p *phone) answerRefer(req *sip.Request) {
	to := ""
	if h := req.GetHeader("Refer-To"); h != nil {
		to = h.Value()
	}
	p.ev.emit("refer", map[string]any{"refer_to": to})
	frag := *p.notify.Load()
	if frag == "" {
		return
	}
	go func() {
		for _, st := range []string{"SIP/2.0 100 Trying", frag} {
			time.Sleep(100 * time.Millisecond)
			err := p.cli.SendNotify(req, st)
			fields := map[string]any{"sipfrag": st}
			if err != nil {
				fields["error"] = err.Error()
			}
			p.ev.emit("notify_sent", fields)
		}
	}()
}

func main() {
	var (
		server   = flag.String("server", "127.0.0.1:5060", "livekit-sip address (SIP over TCP)")
		to       = flag.String("to", "", "number to call: must equal an inbound trunk number")
		from     = flag.String("from", "+15550100001", "this phone's number")
		user     = flag.String("user", "", "digest auth username")
		pass     = flag.String("pass", "", "digest auth password")
		record   = flag.String("record", "", "write everything heard to this 8 kHz WAV file")
		notify   = flag.String("notify", "SIP/2.0 200 OK", "final NOTIFY sipfrag after a REFER ('none': send no NOTIFY)")
		loud     = flag.Float64("loud", defaultLoud, "RMS of a 20 ms frame that counts as voice")
		hang     = flag.Duration("hangover", 600*time.Millisecond, "quiet that ends a voice segment")
		answer   = flag.Duration("answer-timeout", 20*time.Second, "give up when not answered within this")
		duration = flag.Duration("duration", 120*time.Second, "hang up after this long at the latest")
		debug    = flag.Bool("debug", false, "log SIP details to stderr")
	)
	flag.Parse()
	ev := &events{out: bufio.NewWriter(os.Stdout)}
	if *to == "" {
		fmt.Fprintln(os.Stderr, "voicepool-phone: -to is required")
		os.Exit(2)
	}
	lvl := slog.LevelWarn
	if *debug {
		lvl = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	p := &phone{ev: ev, loud: *loud}
	frag := *notify
	if frag == "none" {
		frag = ""
	}
	p.notify.Store(&frag)
	ended := make(chan string, 4)
	cli, err := siptest.NewClient("", siptest.ClientConfig{
		IP:             netip.MustParseAddr("127.0.0.1"), // Contact and SDP stay on loopback
		Number:         *from,
		AuthUser:       *user,
		AuthPass:       *pass,
		Log:            logger,
		OnBye:          func() { ev.emit("bye", nil); ended <- "bye" },
		OnMediaTimeout: func() { ev.emit("media_timeout", nil); ended <- "media timeout" },
		OnDTMF:         func(e dtmf.Event) { ev.emit("dtmf", map[string]any{"digit": string(e.Digit)}) },
		OnRefer:        func(req *sip.Request) { p.answerRefer(req) },
	})
	if err != nil {
		ev.emit("error", map[string]any{"error": err.Error()})
		os.Exit(1)
	}
	p.cli = cli
	p.out = *privateField[*mixer.Mixer](cli, "audioOut")
	// tap the mixer's output (the RTP encoder) before any audio flows
	outField := reflect.ValueOf(p.out).Elem().FieldByName("out")
	if !outField.IsValid() {
		panic("mixer.Mixer has no field out (media-sdk version changed?)")
	}
	mixOut := (*msdk.Writer[msdk.PCM16Sample])(unsafe.Pointer(outField.UnsafeAddr()))
	p.sent = &sentTap{Writer: *mixOut, loud: *loud}
	*mixOut = p.sent
	lis := &listener{ev: ev, loud: *loud, hang: *hang}
	var h rtp.HandlerCloser = lis
	privateField[atomic.Pointer[rtp.HandlerCloser]](cli, "recordHandler").Store(&h)

	// unix_ms ties the phone's clock to the wall clock (worker logs are stamped with it)
	ev.emit("invite", map[string]any{"to": *to, "server": *server, "unix_ms": time.Now().UnixMilli()})
	t0 := time.Now()
	dialed := make(chan error, 1)
	go func() { dialed <- cli.Dial(*server, "voicepool.local", *to, nil) }()
	select {
	case err = <-dialed:
	case <-time.After(*answer):
		err = fmt.Errorf("no final answer within %v", *answer)
	case <-ctx.Done():
		err = errors.New("interrupted")
	}
	if err != nil {
		ev.emit("dial_failed", map[string]any{"error": err.Error(), "after_ms": ms(time.Now()) - ms(t0)})
		ev.emit("exit", nil)
		os.Exit(3)
	}
	ev.emit("answered", map[string]any{"invite_ms": ms(time.Now()) - ms(t0)})

	go func() { _ = cli.SendSilence(ctx) }() // RTP never stops, or livekit-sip times the call out
	go lis.watch(ctx)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
			switch cmd {
			case "play":
				go p.play(arg)
			case "dtmf":
				go func() {
					err := cli.SendDTMF(arg)
					fields := map[string]any{"digits": arg}
					if err != nil {
						fields["error"] = err.Error()
					}
					ev.emit("dtmf_sent", fields)
				}()
			case "notify":
				if arg == "none" {
					arg = ""
				}
				p.notify.Store(&arg)
			case "hangup":
				ended <- "hangup"
				return
			case "":
			default:
				ev.emit("error", map[string]any{"error": "unknown command " + cmd})
			}
		}
		if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
			ev.emit("error", map[string]any{"error": err.Error()})
		}
	}()

	why := "duration"
	select {
	case why = <-ended:
	case <-ctx.Done():
		why = "signal"
	case <-time.After(*duration):
	}
	cli.Close() // sends BYE unless the far end already ended the call
	if *record != "" {
		if err := lis.save(*record); err != nil {
			ev.emit("error", map[string]any{"error": err.Error()})
		}
	}
	ev.emit("exit", map[string]any{"why": why, "frames_heard": lis.frames.Load()})
}
