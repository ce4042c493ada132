// Sends records with Apache Kafka's own Java producer, as many producers in the wild do.
//
// java -cp '<kafka libs>/*' ProduceRecords.java BOOTSTRAP TOPIC < records
// Each line of standard input is one record: "CODEC KEY VALUE", the key and value
// each base64 or "-" for null. One producer per compression.type CODEC (none, gzip,
// snappy, lz4, zstd), all in this one JVM; exit 0 once Kafka has acknowledged every record.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class ProduceRecords {
    public static void main(String[] args) throws Exception {
        Map<String, KafkaProducer<byte[], byte[]>> producers = new HashMap<>();
        List<Future<?>> sent = new ArrayList<>();
        try {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
            for (String line = in.readLine(); line != null; line = in.readLine()) {
                String[] parts = line.split(" ", 3);
                KafkaProducer<byte[], byte[]> producer = producers.computeIfAbsent(parts[0], codec -> open(args[0], codec));
                sent.add(producer.send(new ProducerRecord<>(args[1], bytes(parts[1]), bytes(parts[2]))));
            }
            for (KafkaProducer<byte[], byte[]> producer : producers.values()) {
                producer.flush();
            }
            for (Future<?> f : sent) {
                f.get();
            }
        } finally {
            for (KafkaProducer<byte[], byte[]> producer : producers.values()) {
                producer.close();
            }
        }
    }

    private static KafkaProducer<byte[], byte[]> open(String bootstrap, String codec) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("compression.type", codec);
        props.put("acks", "all");
        props.put("linger.ms", "20");
        return new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer());
    }

    private static byte[] bytes(String field) {
        return field.equals("-") ? null : Base64.getDecoder().decode(field);
    }
}
