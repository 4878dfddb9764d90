"""What requests can name: steering vectors (`steering_vector`, `vector_formats`, `vector_library`)
and presets, both kept as files in a directory (`named_store`, `library_files`)."""
