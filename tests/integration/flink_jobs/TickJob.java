import java.io.File;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

/**
 * A small streaming job for Laminar's tests, with keyed state (a running sum per key) that a
 * checkpoint or savepoint holds. args[0]: milliseconds to sleep per element (a long sleep keeps
 * checkpoint barriers from passing, so a savepoint cannot complete). With args[1] (a marker file)
 * and args[2] (an element): the first time that element comes, the marker is created and the job
 * fails; a job restored after that runs on.
 */
public class TickJob {
    public static void main(String[] args) throws Exception {
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setRuntimeMode(RuntimeExecutionMode.STREAMING);
        final long sleep = Long.parseLong(args[0]);
        final String marker = args.length > 2 ? args[1] : null;
        final long failAt = args.length > 2 ? Long.parseLong(args[2]) : -1;
        env.fromSequence(1, Long.MAX_VALUE)
            .map(x -> {
                Thread.sleep(sleep);
                if (x == failAt && new File(marker).createNewFile()) {
                    throw new IllegalStateException("tick job failed at " + x);
                }
                return x;
            })
            .returns(Long.class)
            .keyBy(x -> x % 4, Types.LONG)
            .reduce(Long::sum)
            .sinkTo(new DiscardingSink<>());
        env.execute("laminar-tick-job");
    }
}
