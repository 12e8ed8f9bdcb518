package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

const dlqUsage = `usage: notifyd dlq <list|replay> [flags]

  list    print the dead letters of notify.dlq up to its current end, one a line, with whether each
          was already replayed or cannot be replayed
  replay  re-inject the matching dead letters: produce each one's original key and value to its
          original topic, and note it in notify.dlq.replays so that it is re-injected once

flags:  --brokers host:port[,…] (default kafka.brokers), --config FILE
        --stage S (a name or a pattern: 'sink.*'), --topic T (also: 'notify.out.*'), --since 1h,
        --id NOTIFICATION_ID, --offset P:O (a dead letter as list names it; repeatable)
list:   --format table|json
replay: --dry-run (print what would be replayed), --force (replay again what was replayed)
`

// usageError is a command line that names no known command; main exits 2 on it.
type usageError string

func (e usageError) Error() string { return string(e) }

// runDLQ is `notifyd dlq list|replay`.
func runDLQ(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError(dlqUsage)
	}
	cmd, args := args[0], args[1:]
	if cmd != "list" && cmd != "replay" {
		return usageError(fmt.Sprintf("notifyd dlq: unknown command %q\n\n%s", cmd, dlqUsage))
	}
	fs := flag.NewFlagSet("dlq "+cmd, flag.ContinueOnError)
	var f letterFilter
	f.register(fs)
	var format *string
	var dryRun, force *bool
	if cmd == "list" {
		format = fs.String("format", "table", "table or json (one object a line)")
	} else {
		dryRun = fs.Bool("dry-run", false, "print what would be replayed, produce nothing")
		force = fs.Bool("force", false, "replay dead letters that were already replayed")
	}
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return fmt.Errorf("dlq %s: %w", cmd, err)
	}
	if format != nil && *format != "table" && *format != "json" {
		return fmt.Errorf("dlq list: --format must be table or json, got %q", *format)
	}
	brokers := cfg.Kafka.Brokers
	if len(brokers) == 0 {
		return fmt.Errorf("dlq %s: --brokers (or kafka.brokers) is required; an all-in-one `notifyd run` listens on 127.0.0.1:%d (kafka.embeddedPort)",
			cmd, cfg.Kafka.EmbeddedPort)
	}
	now := time.Now()
	letters, err := readDeadLetters(ctx, brokers, func(d *deadLetter) bool { return f.match(d, now) }, cmd == "replay")
	if err != nil {
		return fmt.Errorf("dlq %s: %w", cmd, err)
	}
	if cmd == "list" {
		if *format == "json" {
			return listJSON(out, letters)
		}
		return listTable(out, letters)
	}
	return replay(ctx, brokers, letters, out, *dryRun, *force)
}

// dlqRef names a dead letter by its place in notify.dlq.
type dlqRef struct {
	Partition int32
	Offset    int64
}

// String is how list prints it and --offset takes it.
func (r dlqRef) String() string { return fmt.Sprintf("%d:%d", r.Partition, r.Offset) }

// replayKey is the key of its note in notify.dlq.replays.
func (r dlqRef) replayKey() string { return fmt.Sprintf("%d/%d", r.Partition, r.Offset) }

// refList is the repeatable --offset flag.
type refList []dlqRef

func (l *refList) String() string {
	s := make([]string, len(*l))
	for i, r := range *l {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func (l *refList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		p, o, ok := strings.Cut(strings.TrimSpace(s), ":")
		pn, perr := strconv.ParseInt(p, 10, 32)
		on, oerr := strconv.ParseInt(o, 10, 64)
		if !ok || perr != nil || oerr != nil || pn < 0 || on < 0 {
			return fmt.Errorf("want PARTITION:OFFSET of a notify.dlq record, as dlq list prints it (e.g. 0:42), got %q", s)
		}
		*l = append(*l, dlqRef{int32(pn), on})
	}
	return nil
}

// letterFilter selects dead letters; every flag given must match.
type letterFilter struct {
	stage, topic, id string
	since            time.Duration
	refs             refList
}

func (f *letterFilter) register(fs *flag.FlagSet) {
	fs.StringVar(&f.stage, "stage", "", "only dead letters of this stage (a name or a pattern: 'sink.*')")
	fs.StringVar(&f.topic, "topic", "", "only dead letters from this source topic (a name or a pattern like 'notify.out.*')")
	fs.StringVar(&f.id, "id", "", "only dead letters of this notification id")
	fs.DurationVar(&f.since, "since", 0, "only dead letters of the last DURATION (e.g. 1h)")
	fs.Var(&f.refs, "offset", "only the dead letter at PARTITION:OFFSET of notify.dlq (repeatable)")
}

func (f *letterFilter) validate() error {
	if f.since < 0 {
		return fmt.Errorf("--since must be positive, got %s", f.since)
	}
	for flag, pattern := range map[string]string{"--stage": f.stage, "--topic": f.topic} {
		if _, err := path.Match(pattern, ""); err != nil {
			return fmt.Errorf("%s %q: %w", flag, pattern, err)
		}
	}
	return nil
}

func (f *letterFilter) match(d *deadLetter, now time.Time) bool {
	if len(f.refs) > 0 {
		found := false
		for _, r := range f.refs {
			found = found || r == d.ref
		}
		if !found {
			return false
		}
	}
	if f.since > 0 && d.at.Before(now.Add(-f.since)) {
		return false
	}
	if f.stage == "" && f.topic == "" && f.id == "" {
		return true
	}
	if d.letter == nil { // its stage, topic and notification are unknown
		return false
	}
	return matches(f.stage, d.letter.Stage) && matches(f.topic, d.letter.Topic) && (f.id == "" || d.notificationID == f.id)
}

// matches: an empty pattern matches anything.
func matches(pattern, s string) bool {
	ok, _ := path.Match(pattern, s)
	return pattern == "" || ok
}

// deadLetter is one record of notify.dlq as the dlq commands see it.
type deadLetter struct {
	ref dlqRef
	at  time.Time // when it was dead-lettered (the record's timestamp if it does not decode)
	// letter is nil when the record does not decode; then decodeErr says why.
	// Its Key and Value are kept only for replay.
	letter         *schemas.DeadLetter
	decodeErr      error
	notificationID string
	valueBytes     int
	replayed       *replayNote // its note in notify.dlq.replays, if any
}

// The states of a dead letter.
const (
	stateReplayable  = "replayable"
	stateReplayed    = "replayed"
	stateTruncated   = "truncated"
	stateNotInput    = "not-input"
	stateUndecodable = "undecodable"
)

func (d *deadLetter) state() string {
	switch {
	case d.letter == nil:
		return stateUndecodable
	case d.letter.Truncated:
		return stateTruncated
	case !replayableTopic(d.letter.Topic):
		return stateNotInput
	case d.replayed != nil:
		return stateReplayed
	}
	return stateReplayable
}

// refusal says why the dead letter can never be replayed, or "".
func (d *deadLetter) refusal() string {
	switch d.state() {
	case stateUndecodable:
		return "the dead letter does not decode: " + d.decodeErr.Error()
	case stateTruncated:
		return fmt.Sprintf("truncated: the dead letter kept only the first %d bytes of the record", d.valueBytes)
	case stateNotInput:
		return d.letter.Topic + " is not a topic notifyd consumes"
	}
	return ""
}

// replayableTopic: re-injecting a record there re-runs the stage that failed
// on it. Tables (profiles, templates, group tables) are left out on purpose: a
// replayed old value would overwrite newer state.
func replayableTopic(topic string) bool {
	switch topic {
	case string(topology.DedupExpire), string(topology.Scheduled), string(topology.SchedulerDue),
		string(topology.Events), string(topology.Feedback):
		return true
	}
	if slices.Contains(topology.IngestLanes, goka.Stream(topic)) || isAcceptedLane(topic) {
		return true
	}
	if strings.HasPrefix(topic, topology.RetryPrefix) {
		return true
	}
	for _, ch := range processors.AllChannels() {
		for _, p := range processors.Priorities {
			if topic == string(topology.Out(ch, p)) {
				return true
			}
		}
	}
	return false
}

// carriedNotificationID names the notification of a dead letter written
// before DeadLetter.NotificationID existed (or by a stage that leaves it
// empty), from the record it kept.
func carriedNotificationID(dl *schemas.DeadLetter) string {
	if dl.NotificationID != "" || dl.Truncated {
		return dl.NotificationID
	}
	t := dl.Topic
	switch {
	case isAcceptedLane(t) || t == string(topology.Scheduled) ||
		strings.HasPrefix(t, "notify.out.") || strings.HasPrefix(t, topology.RetryPrefix):
		if n, err := schemas.NotificationCodec.Decode(dl.Value); err == nil {
			return n.ID
		}
	case t == string(topology.Events):
		if ev, err := schemas.StatusEventCodec.Decode(dl.Value); err == nil {
			return ev.NotificationID
		}
	case t == string(topology.Feedback):
		if fb, err := schemas.FeedbackCodec.Decode(dl.Value); err == nil {
			return fb.NotificationID
		}
	}
	return ""
}

// replayNote is the value of a notify.dlq.replays record, JSON:
//
//	{"replayedAt":"2026-11-22T10:00:00Z","notificationId":"…","topic":"notify.out.webhook.normal","partition":1,"offset":42}
//
// Its key is <partition>/<offset> of the dead letter in notify.dlq; topic,
// partition and offset are where the replayed record was written. A record
// without a value (a tombstone) forgets the replay, so the dead letter can be
// replayed again without --force.
type replayNote struct {
	ReplayedAt     time.Time `json:"replayedAt"`
	NotificationID string    `json:"notificationId,omitempty"`
	Topic          string    `json:"topic"`
	Partition      int32     `json:"partition"`
	Offset         int64     `json:"offset"`
}

func (n *replayNote) String() string {
	if n.Topic == "" {
		return "(unreadable note)"
	}
	return fmt.Sprintf("%s to %s/%d@%d", n.ReplayedAt.UTC().Format(time.RFC3339), n.Topic, n.Partition, n.Offset)
}

// readDeadLetters reads notify.dlq up to the end it has now and returns the
// dead letters keep selects, in partition and offset order, with their replay
// notes. Their keys and values are dropped unless withRecords.
func readDeadLetters(ctx context.Context, brokers []string, keep func(*deadLetter) bool, withRecords bool) ([]*deadLetter, error) {
	notes := map[string]*replayNote{}
	err := readTopic(ctx, brokers, string(topology.DLQReplays), func(r *kgo.Record) {
		if len(r.Value) == 0 {
			delete(notes, string(r.Key))
			return
		}
		n := new(replayNote)
		if json.Unmarshal(r.Value, n) != nil {
			n = &replayNote{} // unreadable, but a note: never re-inject on doubt
		}
		notes[string(r.Key)] = n
	})
	// A list works against a cluster set up before notify.dlq.replays existed;
	// a replay, which must note what it re-injects, does not.
	if err != nil && (withRecords || !errors.Is(err, errNoTopic)) {
		return nil, err
	}
	var out []*deadLetter
	err = readTopic(ctx, brokers, string(topology.DLQ), func(r *kgo.Record) {
		d := &deadLetter{ref: dlqRef{r.Partition, r.Offset}, at: r.Timestamp}
		d.letter, d.decodeErr = schemas.DeadLetterCodec.Decode(r.Value)
		if d.letter != nil {
			if d.letter.At > 0 {
				d.at = time.UnixMilli(d.letter.At)
			}
			d.notificationID = carriedNotificationID(d.letter)
			d.valueBytes = len(d.letter.Value)
			if !withRecords {
				d.letter.Key, d.letter.Value = nil, nil
			}
		}
		d.replayed = notes[d.ref.replayKey()]
		if keep(d) {
			out = append(out, d)
		}
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].ref, out[j].ref
		return a.Partition < b.Partition || a.Partition == b.Partition && a.Offset < b.Offset
	})
	return out, err
}

var errNoTopic = errors.New("no such topic")

// readTopic calls fn for every record of topic from its start to the end
// offsets it has when the read begins. It relies on the last record before an
// end offset being readable, which holds for the topics read here: no writer
// of them is transactional, and compaction keeps a partition's last record.
func readTopic(ctx context.Context, brokers []string, topic string, fn func(*kgo.Record)) error {
	admCl, err := topology.NewClient(brokers)
	if err != nil {
		return err
	}
	adm := kadm.NewClient(admCl)
	starts, serr := adm.ListStartOffsets(ctx, topic)
	ends, eerr := adm.ListEndOffsets(ctx, topic)
	admCl.Close()
	for _, err := range []error{serr, eerr, starts.Error(), ends.Error()} {
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			return fmt.Errorf("%w: %s at %s (every notifyd role creates it at start)", errNoTopic, topic, strings.Join(brokers, ","))
		}
		if err != nil {
			return fmt.Errorf("read %s: list offsets: %w", topic, err)
		}
	}
	end := map[int32]int64{}
	from := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		s, _ := starts.Lookup(topic, o.Partition)
		if o.Offset > s.Offset {
			end[o.Partition] = o.Offset
			from[o.Partition] = kgo.NewOffset().At(s.Offset)
		}
	})
	if len(end) == 0 {
		return nil
	}
	cl, err := topology.NewClient(brokers,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	for len(end) > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, e := range fetches.Errors() {
			// Retention deleted records while we read: go on from where the
			// partition starts now, and stop if it starts past our end.
			var lost *kgo.ErrDataLoss
			if errors.As(e.Err, &lost) {
				if lost.ResetTo >= end[e.Partition] {
					delete(end, e.Partition)
				}
				continue
			}
			return fmt.Errorf("read %s/%d: %w", e.Topic, e.Partition, e.Err)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			e, ok := end[r.Partition]
			if !ok || r.Offset >= e { // written after the read began
				return
			}
			fn(r)
			if r.Offset+1 >= e {
				delete(end, r.Partition)
			}
		})
	}
	return nil
}

// letterRow is one dead letter in `dlq list --format json`, one object a line.
type letterRow struct {
	DLQPartition   int32       `json:"dlqPartition"`
	DLQOffset      int64       `json:"dlqOffset"`
	At             time.Time   `json:"at"`
	State          string      `json:"state"`
	Stage          string      `json:"stage,omitempty"`
	Source         *sourceRef  `json:"source,omitempty"`
	NotificationID string      `json:"notificationId,omitempty"`
	ValueBytes     int         `json:"valueBytes,omitempty"` // of the kept record
	Reason         string      `json:"reason,omitempty"`
	Error          string      `json:"error,omitempty"` // why the dead letter does not decode
	Replay         *replayNote `json:"replay,omitempty"`
}

type sourceRef struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

func listJSON(out io.Writer, letters []*deadLetter) error {
	enc := json.NewEncoder(out)
	for _, d := range letters {
		row := letterRow{DLQPartition: d.ref.Partition, DLQOffset: d.ref.Offset, At: d.at.UTC(), State: d.state(),
			NotificationID: d.notificationID, ValueBytes: d.valueBytes, Replay: d.replayed}
		if dl := d.letter; dl != nil {
			row.Stage, row.Reason = dl.Stage, dl.Reason
			row.Source = &sourceRef{dl.Topic, dl.Partition, dl.Offset}
		} else {
			row.Error = d.decodeErr.Error()
		}
		if err := enc.Encode(row); err != nil {
			return err
		}
	}
	return nil
}

func listTable(out io.Writer, letters []*deadLetter) error {
	if len(letters) == 0 {
		_, err := fmt.Fprintln(out, "no dead letters")
		return err
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "DLQ\tAT\tSTAGE\tSOURCE\tNOTIFICATION\tSTATE\tREASON")
	count := map[string]int{}
	for _, d := range letters {
		st := d.state()
		count[st]++
		stage, source, reason := "-", "-", ""
		if dl := d.letter; dl != nil {
			stage, source, reason = orDash(dl.Stage), fmt.Sprintf("%s/%d@%d", dl.Topic, dl.Partition, dl.Offset), dl.Reason
		} else {
			reason = d.decodeErr.Error()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ref, d.at.UTC().Format(time.RFC3339), stage, source,
			orDash(d.notificationID), st, oneLine(reason, 120))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "%d dead letters: %d replayable, %d replayed, %d cannot be replayed (%d truncated, %d not from a notifyd input, %d undecodable)\n",
		len(letters), count[stateReplayable], count[stateReplayed],
		count[stateTruncated]+count[stateNotInput]+count[stateUndecodable],
		count[stateTruncated], count[stateNotInput], count[stateUndecodable])
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps the first line of s, at most max runes, fit for a table cell.
func oneLine(s string, max int) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i]) + " …"
	}
	s = strings.ReplaceAll(s, "\t", " ")
	if utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max-1]) + "…"
	}
	return s
}

// replayBatch bounds the records produced (and held) per acknowledgement round.
const replayBatch = 500

// replay re-injects the replayable letters and notes each in notify.dlq.replays.
// The note is written only after the broker acknowledged the re-injected
// record: a replay interrupted between the two re-injects that dead letter
// again next time (at least once), never loses it. Two replays running at the
// same time may both re-inject a dead letter.
func replay(ctx context.Context, brokers []string, letters []*deadLetter, out io.Writer, dryRun, force bool) error {
	var selected []*deadLetter
	skipped, refused := 0, 0
	for _, d := range letters {
		switch {
		case d.refusal() != "":
			refused++
			fmt.Fprintf(out, "refused %s %s: %s\n", d.ref, orDash(d.notificationID), d.refusal())
		case d.replayed != nil && !force:
			skipped++
			fmt.Fprintf(out, "skipped %s %s: already replayed %s (--force replays it again)\n", d.ref, orDash(d.notificationID), d.replayed)
		default:
			selected = append(selected, d)
		}
	}
	if dryRun {
		for _, d := range selected {
			fmt.Fprintf(out, "would replay %s %s → %s (key %q, %d bytes)\n", d.ref, orDash(d.notificationID), d.letter.Topic, d.letter.Key, d.valueBytes)
		}
		_, err := fmt.Fprintf(out, "dry run: would replay %d, skipped %d (already replayed), refused %d\n", len(selected), skipped, refused)
		return err
	}
	replayed, failed := 0, 0
	if len(selected) > 0 {
		// The partitioner goka reads with (DESIGN rule 1): a replayed record
		// lands on the partition of its key.
		producer, err := topology.NewProducer(brokers)
		if err != nil {
			return err
		}
		defer producer.Close()
		for len(selected) > 0 {
			batch := selected[:min(replayBatch, len(selected))]
			selected = selected[len(batch):]
			ok, nfailed, err := replayOnce(ctx, producer, batch, out)
			replayed += ok
			failed += nfailed
			if err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(out, "replayed %d, skipped %d (already replayed), refused %d", replayed, skipped, refused)
	if failed > 0 {
		fmt.Fprintf(out, ", failed %d\n", failed)
		return fmt.Errorf("dlq replay: %d dead letters were not replayed (see above); running replay again retries them", failed)
	}
	fmt.Fprintln(out)
	return nil
}

// replayOnce re-injects batch and then notes what the broker acknowledged.
func replayOnce(ctx context.Context, producer *kgo.Client, batch []*deadLetter, out io.Writer) (replayed, failed int, err error) {
	records := make([]*kgo.Record, len(batch))
	for i, d := range batch {
		records[i] = &kgo.Record{Topic: d.letter.Topic,
			// Never a nil key: goka wrote the key as a string, hashed even when empty.
			Key:   append([]byte{}, d.letter.Key...),
			Value: d.letter.Value,
			// Where it came from, for whoever traces the replayed record.
			Headers: []kgo.RecordHeader{{Key: "notifyd-dlq-replay", Value: []byte(d.ref.replayKey())}}}
	}
	results := producer.ProduceSync(ctx, records...)
	var notes []*kgo.Record
	var noted []*deadLetter
	now := time.Now().UTC()
	for i, res := range results {
		d := batch[i]
		if res.Err != nil {
			failed++
			fmt.Fprintf(out, "failed %s %s → %s: %v\n", d.ref, orDash(d.notificationID), d.letter.Topic, res.Err)
			continue
		}
		note, _ := json.Marshal(replayNote{ReplayedAt: now, NotificationID: d.notificationID,
			Topic: res.Record.Topic, Partition: res.Record.Partition, Offset: res.Record.Offset})
		notes = append(notes, &kgo.Record{Topic: string(topology.DLQReplays), Key: []byte(d.ref.replayKey()), Value: note})
		noted = append(noted, d)
		fmt.Fprintf(out, "replayed %s %s → %s/%d@%d\n", d.ref, orDash(d.notificationID), res.Record.Topic, res.Record.Partition, res.Record.Offset)
	}
	replayed = len(noted)
	if len(notes) == 0 {
		return replayed, failed, nil
	}
	if err := producer.ProduceSync(ctx, notes...).FirstErr(); err != nil {
		return replayed, failed, fmt.Errorf("dlq replay: %d dead letters were re-injected but not noted in %s (%w); a next replay re-injects them again unless they are noted",
			len(notes), topology.DLQReplays, err)
	}
	return replayed, failed, nil
}

func isAcceptedLane(topic string) bool {
	return slices.Contains(topology.AcceptedLanes, goka.Stream(topic))
}
